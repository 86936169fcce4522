"""Address and name sets that the config holds and the policy asks: IP networks, address
normalisation, domain patterns. Pure.
"""
