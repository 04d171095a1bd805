"""Astra Core's first-party training algorithms: DPO, IPO, PPO and tree-group policy gradient.

Importing this package is light (no torch): the algorithms live in their own modules
(`astra_algorithms.dpo`, `.ipo`, `.ppo`, `.grpo`) and are registered by name from
`astra_algorithms.plugin`, so a run file says ``algorithm = "dpo"``.
"""

from __future__ import annotations

__version__ = "0.1.0"
