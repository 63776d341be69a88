"""tabby.bgp: BGP route distribution through BIRD 2, configured from the datastore.

Modules (nothing is imported here, so `tabby node status` stays cheap to start):

    inputs.py      the datastore keys BGP reads, kept as typed objects (BgpInputs)
    peers.py       which sessions a node has: mesh, BGPPeers, route reflection (pure)
    render.py      the whole bird.conf of one node (pure, golden-tested)
    filters.py     BGPFilter rules as BIRD functions, called by the sessions' filters (pure)
    bird.py        BIRD as a supervised child: check (`bird -p`), install, configure, stop
    birdctl.py     a client for BIRD's control socket
    controller.py  BgpController: updates in, a running BIRD with the right config out
    status.py      `tabby node status`: collect_status(), print_status(), default_socket()
    run.py         `python -m tabby.bgp.run`: the controller fed straight from a datastore
    testing.py     helpers for namespace tests and benchmarks

See docs/design/bgp.md.
"""
