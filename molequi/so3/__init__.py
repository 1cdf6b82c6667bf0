"""molequi.so3"""
