"""Sensors that watch the streaming path and ask for reconciliations when it misbehaved.

Every tick creates its clients, bounds each call with a timeout and the whole tick with
a time budget (well under Dagster's 60 s), keeps its state in a small JSON cursor and
reports what it saw as asset observations (a tick without run requests says in its skip
reason what it observed). ``replication_health`` only requests the ``replication_checks`` job,
which observes every table and evaluates its checks in a run. One module per sensor:
"""

from cdc_pipelines.defs.dlq_sensor import make_dlq_sensor
from cdc_pipelines.defs.fanout_sensor import make_slice_fanout_sensor
from cdc_pipelines.defs.health_sensor import make_connector_health_sensor
from cdc_pipelines.defs.lag_sensor import make_consumer_lag_sensor
from cdc_pipelines.defs.names import ESCALATION_OP
from cdc_pipelines.defs.observe_sensor import make_replication_health_sensor

__all__ = [
    "ESCALATION_OP",
    "make_connector_health_sensor",
    "make_consumer_lag_sensor",
    "make_dlq_sensor",
    "make_replication_health_sensor",
    "make_slice_fanout_sensor",
]
