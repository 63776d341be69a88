"""tabby.lab"""
