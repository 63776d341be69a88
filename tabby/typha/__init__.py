"""tabby.typha"""
