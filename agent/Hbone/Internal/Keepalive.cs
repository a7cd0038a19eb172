namespace Weft.Hbone.Internal;

/// <summary>
/// Sends a PING every <c>interval</c> and ends the connection when one is not acknowledged within
/// <c>timeout</c>, so a peer that vanished without a FIN (a dead node, a dropped path) frees its tunnels.
/// </summary>
internal sealed class Keepalive
{
    private readonly TimeSpan _interval;
    private readonly TimeSpan _timeout;
    private readonly Action<ulong> _sendPing;
    private readonly Action<HboneException> _onTimeout;
    private readonly TimeProvider _time;
    private readonly object _sync = new();
    private TaskCompletionSource? _pingAck;  // under _sync
    private ulong _pingPayload;              // under _sync
    private bool _stopped;                   // under _sync

    /// <param name="sendPing">Queues a PING with this payload.</param>
    /// <param name="onTimeout">Ends the connection: the peer did not answer in time.</param>
    public Keepalive(TimeSpan interval, TimeSpan timeout, Action<ulong> sendPing, Action<HboneException> onTimeout, TimeProvider? time = null)
    {
        _interval = interval;
        _timeout = timeout;
        _sendPing = sendPing;
        _onTimeout = onTimeout;
        _time = time ?? TimeProvider.System;
    }

    public bool Enabled => _interval != Timeout.InfiniteTimeSpan && _interval > TimeSpan.Zero;

    /// <summary>Pings until <paramref name="ct"/> is cancelled, <see cref="Stop"/> is called, or a PING goes unanswered.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        if (!Enabled)
        {
            return;
        }
        ulong counter = 0;
        try
        {
            while (true)
            {
                await Task.Delay(_interval, _time, ct).ConfigureAwait(false);
                var ack = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                lock (_sync)
                {
                    if (_stopped)
                    {
                        return;
                    }
                    _pingAck = ack;
                    _pingPayload = ++counter;
                }
                _sendPing(counter);
                try
                {
                    await ack.Task.WaitAsync(_timeout, _time, ct).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    Log.Debug("hbone", "keepalive PING not acknowledged; closing the connection");
                    _onTimeout(new HboneException($"keepalive PING not acknowledged within {_timeout}"));
                    return;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>A PING ACK from the peer: answers the outstanding PING if the payload is ours.</summary>
    public void OnPingAck(ulong opaque)
    {
        lock (_sync)
        {
            if (_pingAck is not null && opaque == _pingPayload)
            {
                _pingAck.TrySetResult();
            }
        }
    }

    /// <summary>The connection ended: the loop stops without waiting for the outstanding PING.</summary>
    public void Stop()
    {
        lock (_sync)
        {
            _stopped = true;
            _pingAck?.TrySetCanceled();
        }
    }
}
