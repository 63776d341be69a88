"""tabby.calc"""
