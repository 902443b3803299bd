from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from connectors.metrics import publisher_metrics, subscriber_metrics


def test_each_new_registry_gets_its_own_metrics_even_when_an_old_one_was_collected() -> None:
    # CPython hands a freed registry's address to the next one; metrics cached by id() would then be
    # the dead registry's, and the new registry would read 0 for everything counted.
    for i in range(200):
        reg = CollectorRegistry()
        publisher_metrics(reg).sent_events.inc(i + 1)
        subscriber_metrics(reg).rejected.inc()
        assert reg.get_sample_value("rollout_gate_publisher_sent_events_total") == i + 1
        assert reg.get_sample_value("rollout_gate_subscriber_rejected_total") == 1
        del reg
        gc.collect()


def test_the_same_registry_gets_the_same_metrics() -> None:
    reg = CollectorRegistry()
    assert publisher_metrics(reg) is publisher_metrics(reg)
    assert subscriber_metrics(reg) is subscriber_metrics(reg)
