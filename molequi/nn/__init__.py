"""molequi.nn"""
