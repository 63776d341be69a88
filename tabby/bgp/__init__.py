"""tabby.bgp"""
