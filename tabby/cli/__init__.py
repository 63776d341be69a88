"""tabby.cli"""
