"""``condmonge config``: the default configuration, one commented line per key."""

import yaml

import condmonge as cm
from condmonge.config import config_from_dict
from condmonge.config_text import COMMENTS, default_config_text


def test_every_key_has_a_comment_and_the_text_reads_back_as_the_defaults():
    tree = cm.Config().model_dump(mode="json")
    keys = {f"{section}.{key}" for section, values in tree.items() for key in values}
    assert keys == set(COMMENTS)  # none missing (a KeyError in the command), none stale
    text = default_config_text()
    assert yaml.safe_load(text) == tree
    body = [line for line in text.splitlines() if line.startswith("  ")]
    assert len(body) == len(keys) and all(" # " in line for line in body)
    assert cm.Config().updated({}) == config_from_dict(yaml.safe_load(text))
