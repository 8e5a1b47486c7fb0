from foundation import Foundation


def test_set_get(fdn: Foundation) -> None:
    fdn.config.set("port", 4000)
    assert fdn.config.get("port") == 4000
