using System.IO.Pipelines;
using System.Net.Sockets;

namespace Weft.Proxy;

/// <summary>
/// Relays between a plain socket and a tunnel stream (an HBONE CONNECT stream): the stream's own
/// pipes carry the bytes, so no extra copy is made. End of stream maps to END_STREAM both ways and
/// a reset on either side resets the other.
/// </summary>
internal sealed class StreamRelay
{
    private readonly Socket _socket;
    private readonly IDuplexPipe _stream;
    private readonly Action _resetStream;
    private readonly IRelayObserver _observer;
    private readonly bool _socketIsA;

    /// <param name="socketIsA">True when the socket is the client side (its bytes count as sent).</param>
    public StreamRelay(Socket socket, IDuplexPipe stream, Action resetStream, IRelayObserver observer, bool socketIsA)
    {
        _socket = socket;
        _stream = stream;
        _resetStream = resetStream;
        _observer = observer;
        _socketIsA = socketIsA;
    }

    public Task RunAsync()
    {
        var inbound = new CountingObserver(_observer, !_socketIsA);
        return Task.WhenAll(
            RelayPumps.SocketToPipeAsync(_socket, _stream.Output, _observer, fromA: _socketIsA, onReset: _resetStream),
            CountAndSendAsync(inbound));
    }

    private Task CountAndSendAsync(CountingObserver counter) =>
        RelayPumps.PipeToSocketAsync(new CountingReader(_stream.Input, counter), _socket, onFailure: _resetStream);

    public void Abort()
    {
        _resetStream();
        RelayPumps.Reset(_socket);
    }

    private sealed class CountingObserver(IRelayObserver inner, bool fromA)
    {
        public void Count(long bytes) => inner.OnBytes(fromA, (int)bytes);
    }

    /// <summary>Counts what the tunnel delivers as it is consumed, so byte counters grow while open.</summary>
    private sealed class CountingReader(PipeReader inner, CountingObserver counter) : PipeReader
    {
        private System.Buffers.ReadOnlySequence<byte> _last;

        public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            counter.Count(_last.Slice(0, consumed).Length);
            inner.AdvanceTo(consumed, examined);
        }

        public override void CancelPendingRead() => inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => inner.Complete(exception);

        public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            var result = await inner.ReadAsync(cancellationToken).ConfigureAwait(false);
            _last = result.Buffer;
            return result;
        }

        public override bool TryRead(out ReadResult result)
        {
            var ok = inner.TryRead(out result);
            if (ok)
            {
                _last = result.Buffer;
            }

            return ok;
        }
    }
}
