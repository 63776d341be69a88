"""tabby.dataplane"""
