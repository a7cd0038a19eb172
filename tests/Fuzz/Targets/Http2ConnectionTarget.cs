using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using Weft.Hbone;
using Weft.Hbone.Internal;
using Weft.Hbone.Internal.Hpack;
using Weft.Proxy;

namespace Weft.Fuzz;

/// <summary>
/// Bytes a client sends after the preface, into a real HBONE server connection (frame reader, HPACK,
/// stream table, flow control, CONNECT rules) over an in-memory transport; CONNECTs are decided as the
/// inbound proxy does and accepted ones are read to their end.
/// The connection turns bad input into GOAWAY or RST_STREAM and ends quietly; it reports anything
/// unforeseen as a failure whose cause is not a protocol error, and that is the crash this target looks for.
/// </summary>
internal sealed class Http2ConnectionTarget : IFuzzTarget
{
    private static readonly HboneSettings Settings = new()
    {
        // No timers: an execution must depend on its input only.
        KeepaliveInterval = Timeout.InfiniteTimeSpan,
        MaxConcurrentStreams = 8,
        StreamWindow = 65_535,
        ConnectionWindow = 256 * 1024,
    };

    public string Name => "http2";

    public string Description => "HTTP/2 frames with HPACK into an HBONE server connection";

    public void Run(ReadOnlySpan<byte> input)
    {
        var bytes = new byte[FrameHeader.ClientPreface.Length + input.Length];
        FrameHeader.ClientPreface.CopyTo(bytes);
        input.CopyTo(bytes.AsSpan(FrameHeader.ClientPreface.Length));
        var transport = new InputTransport(bytes);
        var connection = new Http2Connection(transport, Settings, isClient: false, OnConnectAsync);
        var run = Task.Run(async () =>
        {
            await connection.SendPrefaceAsync(CancellationToken.None).ConfigureAwait(false);
            await connection.RunAsync().ConfigureAwait(false);
            await connection.WaitForHandlersAsync().ConfigureAwait(false);
        });

        // AFL++ kills a hung execution itself (run.sh: 5 s); this bound is for the replay test on a loaded machine.
        if (!run.Wait(TimeSpan.FromSeconds(90)))
        {
            throw new TimeoutException("the connection did not end after its input ran out");
        }

        if (connection.Completion.Exception?.InnerException is HboneException { InnerException: { } cause } && !IsTransportEnd(cause))
        {
            throw new UnexpectedFailureException(cause);
        }
    }

    // The transport ends (our stream reports end of input) or is disposed by the connection itself.
    private static bool IsTransportEnd(Exception e) => e is IOException or ObjectDisposedException or OperationCanceledException;

    private static async Task OnConnectAsync(HboneRequest request)
    {
        var target = IPEndPoint.TryParse(request.Authority, out var parsed) ? parsed : null;
        _ = PodProxy.ForwardedFor(request.Headers);
        if (InboundDecision.Connect(FuzzWorld.Snapshot, FuzzWorld.Pod, request.Authority, target, FuzzWorld.Peer, IPAddress.Loopback, FuzzWorld.Guard) is not null)
        {
            await request.RejectAsync(403).ConfigureAwait(false);
            return;
        }

        try
        {
            var stream = await request.AcceptAsync().ConfigureAwait(false);
            await using (stream.ConfigureAwait(false))
            {
                while (true)
                {
                    var read = await stream.Input.ReadAsync().ConfigureAwait(false);
                    stream.Input.AdvanceTo(read.Buffer.End);
                    if (read.IsCompleted || read.IsCanceled)
                    {
                        break;
                    }
                }
            }
        }
        catch (Exception e) when (e is HboneException or IOException or OperationCanceledException)
        {
            // The tunnel ended under the request: how a relay sees a reset or a closed connection.
        }
    }

    public IEnumerable<(string Name, byte[] Content)> Seeds()
    {
        yield return ("settings-only", Frames(w => FrameWriter.WriteSettings(w, [(SettingId.MaxFrameSize, 16_384), (SettingId.InitialWindowSize, 1 << 20)])));
        yield return ("connect-and-data", Frames(w =>
        {
            FrameWriter.WriteSettings(w, []);
            FrameWriter.WriteSettingsAck(w);
            FrameWriter.WriteHeaderBlock(w, 1, Hpack([(":method", "CONNECT"), (":authority", "10.244.2.2:8080"), ("forwarded", "for=\"10.244.1.2:40000\"")]), endStream: false, 16_384);
            FrameWriter.WriteData(w, 1, new ReadOnlySequence<byte>("hello"u8.ToArray()), endStream: false);
            FrameWriter.WriteWindowUpdate(w, 0, 1000);
            FrameWriter.WriteWindowUpdate(w, 1, 1000);
            FrameWriter.WritePing(w, 7, ack: false);
            FrameWriter.WriteData(w, 1, new ReadOnlySequence<byte>("bye"u8.ToArray()), endStream: true);
            FrameWriter.WriteGoAway(w, 1, Http2ErrorCode.NoError);
        }));
        yield return ("continuation-and-reset", Frames(w =>
        {
            FrameWriter.WriteSettings(w, [(SettingId.HeaderTableSize, 256)]);
            FrameWriter.WriteHeaderBlock(w, 3, Hpack([(":method", "CONNECT"), (":authority", "10.244.2.2:9999"), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]), endStream: false, 10);
            FrameWriter.WriteRstStream(w, 3, Http2ErrorCode.Cancel);
            FrameWriter.WriteHeaderBlock(w, 5, Hpack([(":method", "GET"), (":authority", "x"), (":path", "/")]), endStream: true, 16_384);
        }));
        yield return ("refused-authority", Frames(w =>
        {
            FrameWriter.WriteSettings(w, []);
            FrameWriter.WriteHeaderBlock(w, 1, Hpack([(":method", "CONNECT"), (":authority", "[fd00::2:2]:15008")]), endStream: false, 16_384);
            FrameWriter.WriteHeaderBlock(w, 3, Hpack([(":method", "CONNECT"), (":authority", "10.9.9.9:80")]), endStream: false, 16_384);
        }));
    }

    private static byte[] Frames(Action<IBufferWriter<byte>> write)
    {
        var buffer = new ArrayBufferWriter<byte>();
        write(buffer);
        return buffer.WrittenSpan.ToArray();
    }

    internal static byte[] Hpack(IEnumerable<(string Name, string Value)> fields)
    {
        var buffer = new ArrayBufferWriter<byte>();
        HpackEncoder.Encode(fields.Select(f => KeyValuePair.Create(f.Name, f.Value)), buffer);
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>A transport whose read side is the input, then end of stream; what the server writes is dropped.</summary>
    private sealed class InputTransport(byte[] input) : Stream
    {
        private int _position;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            var n = Math.Min(buffer.Length, input.Length - _position);
            input.AsSpan(_position, n).CopyTo(buffer);
            _position += n;
            return n;
        }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            ValueTask.FromResult(Read(buffer.Span));

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            Task.FromResult(Read(buffer.AsSpan(offset, count)));

        public override void Write(byte[] buffer, int offset, int count)
        {
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => Task.CompletedTask;

        public override void Flush()
        {
        }

        public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }
}

/// <summary>A failure a harness saw through a layer that reports it without throwing (a connection's outcome, a watch's log).</summary>
internal sealed class UnexpectedFailureException(Exception cause) : Exception($"unexpected {cause.GetType().Name}: {cause.Message}", cause);
