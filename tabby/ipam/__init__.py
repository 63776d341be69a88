"""tabby.ipam: Calico-style IP address management with block affinity.

    from tabby.ipam.allocator import IPAM, IPAMError
    result = IPAM(ds).auto_assign(handle, node, num_v4=1, attrs={...})

Modules: block.py (pure block arithmetic), store.py (key layout, compare-and-swap),
affinity.py (claim/release/repair of block affinities), pools.py (IPPool/Node JSON, pool
selection), allocator.py (the IPAM API), check.py (`ipam check` / `ipam gc`), bench.py.

Nothing is imported here: the CNI plugin imports tabby.ipam.allocator on every ADD.
"""
