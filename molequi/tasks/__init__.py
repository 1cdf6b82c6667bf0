"""molequi.tasks"""
