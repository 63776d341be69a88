"""tabby.cni"""
