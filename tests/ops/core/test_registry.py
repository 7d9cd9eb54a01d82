"""The registry every algorithm family uses: duplicates refused, unknown names answered with the known ones."""

import pytest

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.core.registry import Registry
from modelsurgeon.ops.merge.methods import REGISTRY as MERGE
from modelsurgeon.ops.prune.criteria import CRITERIA


def test_add_lookup_and_duplicates():
    r = Registry("widget", "see --list")
    r.add("alpha", 1)
    assert r.lookup("alpha") == 1 and list(r) == ["alpha"]
    with pytest.raises(ValueError, match="already registered"):
        r.add("alpha", 2)


def test_unknown_name_lists_known_and_suggests():
    r = Registry("widget", "see --list")
    r.add("alpha", 1)
    r.add("beta", 2)
    with pytest.raises(UsageError, match=r"did you mean alpha\?.*known widgets: alpha, beta \(see --list\)"):
        r.lookup("alpah")
    with pytest.raises(SurgeonError) as e:
        Registry("recipe thing", usage=False).lookup("x")
    assert e.value.exit_code == 1


def test_real_registries_refuse_duplicates():
    with pytest.raises(ValueError):
        MERGE.add("ties", MERGE["ties"])
    with pytest.raises(ValueError):
        CRITERIA.add("magnitude", CRITERIA["magnitude"])
