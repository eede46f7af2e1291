import gateway


def test_all_matches_the_public_names():
    public = {n for n in vars(gateway) if not n.startswith("_")
              and not isinstance(getattr(gateway, n), type(gateway))}
    assert set(gateway.__all__) == public
    assert gateway.__all__ == sorted(gateway.__all__)
