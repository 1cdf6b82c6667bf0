"""molequi.cli"""
