"""molequi.calculators"""
