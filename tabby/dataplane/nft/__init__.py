"""Tabby's nftables policy dataplane: one private `inet tabby` table, written atomically.

render.py builds the desired table from the calc graph's messages (pure), model.py
writes it as a full replace or an in-place delta, rules.py compiles single rules, and
driver.py runs `nft -f -` (in a namespace if asked). See docs/design/dataplane.md.
"""

from tabby.dataplane.nft.driver import ApplyResult, ExistingTable, NftApplyError, NftDataplane
from tabby.dataplane.nft.render import DataplaneState, Rendered, build

__all__ = [
    "ApplyResult", "DataplaneState", "ExistingTable", "NftApplyError", "NftDataplane",
    "Rendered", "build",
]
