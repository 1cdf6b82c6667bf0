"""molequi.train"""
