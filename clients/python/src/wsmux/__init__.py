"""Python client for wsmuxd, the daemon that shares one upstream WebSocket per endpoint
between local processes. See PROTOCOL.md in the wsmux repository for the wire protocol.

Blocking::

    import wsmux

    with wsmux.Client.connect() as client:          # $WSMUX_SOCKET or the default socket
        client.subscribe("prices")
        client.wait_for_state("prices", "open", timeout=10)
        client.send("prices", '{"op":"subscribe","channel":"BTC-USD"}')
        for event in client.events():
            if isinstance(event, wsmux.Message):
                print(event.seq, event.data)
            elif isinstance(event, wsmux.State):
                print(event.endpoint, "is", event.state)

Topics (endpoints with ``[endpoints.NAME.topics]`` in the daemon's configuration)::

    client.subscribe("binance", topics=["btcusdt@trade", "ethusdt@trade"])
    for event in client.events():
        if isinstance(event, wsmux.Message):
            print(event.topic, event.topic_seq, event.data)
        elif isinstance(event, wsmux.ErrorEvent) and event.code == "topic_rejected":
            print(event.topic, "refused:", event.message)

asyncio::

    async with await wsmux.AsyncClient.connect() as client:
        await client.subscribe("prices")
        async for event in client.events():
            ...

Both clients reconnect by themselves when the connection to the daemon drops, and resume
every subscription from where it was (``Disconnected``, then ``Reconnected`` with
``recovered``); after ``lagged`` they resume from the daemon's history (``Resumed``).
``reconnect=False`` turns this off.
"""

from .aio import AsyncClient
from .client import Client
from .errors import (
    ConnectionClosed,
    ConnectionLost,
    DaemonError,
    DaemonUnavailable,
    LimitExceeded,
    NotConnected,
    ProtocolError,
    UntrustedDaemon,
    WsmuxError,
)
from .events import (
    ClientLagged,
    Disconnected,
    EndpointRecovery,
    ErrorEvent,
    Event,
    Lagged,
    Message,
    OtherEvent,
    Reconnected,
    Resumed,
    State,
    Subscription,
)
from .protocol import (
    DEFAULT_MAX_FRAME,
    ERROR_CODES,
    FATAL_CODES,
    PROTOCOL_VERSION,
    FrameDecoder,
    decode_body,
    decode_frame,
    default_socket_path,
    encode_frame,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_FRAME",
    "ERROR_CODES",
    "FATAL_CODES",
    "PROTOCOL_VERSION",
    "AsyncClient",
    "Client",
    "ClientLagged",
    "ConnectionClosed",
    "ConnectionLost",
    "DaemonError",
    "DaemonUnavailable",
    "Disconnected",
    "EndpointRecovery",
    "ErrorEvent",
    "Event",
    "FrameDecoder",
    "Lagged",
    "LimitExceeded",
    "Message",
    "NotConnected",
    "OtherEvent",
    "ProtocolError",
    "Reconnected",
    "Resumed",
    "State",
    "Subscription",
    "UntrustedDaemon",
    "WsmuxError",
    "decode_body",
    "decode_frame",
    "default_socket_path",
    "encode_frame",
]
