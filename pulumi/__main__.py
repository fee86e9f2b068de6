"""The Wrenn fleet program: ``pulumi up`` in this directory stands up the fleet described by the stack's config.

The components live in `wrenn.provision.fleet` (importable, typed, tested with Pulumi's mocks); this file only
reads the config, builds the fleet and exports its outputs.
"""

import pulumi

from wrenn.provision.fleet import WrennFleet, settings_from_config

fleet = WrennFleet("wrenn", settings_from_config(pulumi.Config("wrenn")))
for key, value in fleet.outputs().items():
    pulumi.export(key, value)
