"""tabby.agent"""
