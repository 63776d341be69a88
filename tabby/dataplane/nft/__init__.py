"""Tabby's nftables policy dataplane: one private `inet tabby` table, written atomically.

render.py builds the desired table from the calc graph's messages (pure), tiers.py
writes tier chains (inlining small allow-only policies, portmap.py indexing long runs
of them by port), ipsets.py turns IP set members into elements, merge.py
turns a policy's rule list into few nft rules (set lookups), rules.py compiles single
rules, model.py writes the table as a full replace or an in-place delta, and driver.py
runs `nft -f -` (in a namespace if asked). See docs/design/dataplane.md.
"""

from tabby.dataplane.nft.driver import ApplyResult, ExistingTable, NftApplyError, NftDataplane
from tabby.dataplane.nft.render import DataplaneState, Rendered, build

__all__ = [
    "ApplyResult", "DataplaneState", "ExistingTable", "NftApplyError", "NftDataplane",
    "Rendered", "build",
]
