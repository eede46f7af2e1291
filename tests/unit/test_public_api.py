import types

import gateway


def test_all_matches_the_public_names():
    public = {n for n, v in vars(gateway).items() if not n.startswith("_")
              and not isinstance(v, types.ModuleType) and n != "annotations"}
    assert set(gateway.__all__) == public
    assert gateway.__all__ == sorted(gateway.__all__)
