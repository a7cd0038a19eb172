using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Weft.Hbone;
using Weft.Hbone.Internal;
using Weft.Proxy;
using Weft.Tests.Proxy;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>
/// A stream's consecutive DATA frames that the reader has in hand together reach the stream's consumer in one piece (one
/// send to the app's socket instead of one per frame or TLS record), and nothing the peer sent is reordered, held past a
/// wait, or delivered after the stream's end.
/// </summary>
public sealed class HboneJoinedDataTests
{
    private const int Answer = 256 * 1024;

    [Fact]
    public async Task FramesReadTogether_ReachTheConsumerJoined_InOrder_EachHandedOverBeforeTheNextStreamsOrFrame()
    {
        var counters = new HboneCounters();
        var sinks = new Dictionary<int, RecordingSink>();
        var accepted = new Dictionary<int, TaskCompletionSource>();
        foreach (var id in new[] { 1, 3, 5 })
        {
            sinks[id] = new RecordingSink();
            accepted[id] = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        await using var client = await RawH2Client.StartAsync(async request =>
        {
            var stream = await request.AcceptAsync();
            var sink = sinks[stream.StreamId];
            stream.DeliverTo(sink);
            accepted[stream.StreamId].SetResult();
            await sink.Over.Task;
        }, QuietSettings with { Counters = counters });
        await client.SendPrefaceAndSettingsAsync();
        foreach (var id in new[] { 1, 3, 5 })
        {
            await client.SendFrameAsync(FrameType.Headers, FrameFlags.EndHeaders, id, RawH2Client.ConnectBlock());
            await accepted[id].Task.WaitAsync(Patience);
        }

        // One write: the server's reader has every frame in hand at once.
        byte[] burst =
        [
            .. RawH2Client.Frame(FrameType.Data, 0, 1, "a"u8),
            .. RawH2Client.Frame(FrameType.Data, 0, 1, "b"u8),
            .. RawH2Client.Frame(FrameType.Data, 0, 1, "c"u8),
            .. RawH2Client.Frame(FrameType.Data, 0, 3, "x"u8),
            .. RawH2Client.Frame(FrameType.Data, 0, 1, "d"u8),
            .. RawH2Client.Frame(FrameType.Data, FrameFlags.EndStream, 1, "e"u8),
            .. RawH2Client.Frame(FrameType.Data, 0, 3, "y"u8),
            .. RawH2Client.Frame(FrameType.Data, 0, 3, "z"u8),
            .. RawH2Client.Frame(FrameType.RstStream, 0, 3, [0, 0, 0, (byte)Http2ErrorCode.Cancel]),
            .. RawH2Client.Frame(FrameType.Data, 0, 5, "p"u8),
            .. RawH2Client.Frame(FrameType.Data, 0, 5, "q"u8),
            .. RawH2Client.Frame(FrameType.Data, FrameFlags.EndStream, 5, []),
        ];
        await client.SendAsync(burst);
        await sinks[1].Over.Task.WaitAsync(Patience);
        await sinks[3].Over.Task.WaitAsync(Patience);
        await sinks[5].Over.Task.WaitAsync(Patience);

        // Stream 1: "abc" in one piece, handed over when stream 3's frame came; "d" joined by END_STREAM's payload, then
        // the stream's end. Stream 3: "x" alone (stream 1's frame came next), "yz" handed over before the RST_STREAM.
        // Stream 5: "pq" handed over before the empty END_STREAM that follows it.
        Assert.Equal(["take abc", "take de", "end"], sinks[1].Events);
        Assert.Equal(["take x", "take yz", "aborted"], sinks[3].Events.Take(3));
        Assert.Equal(["take pq", "end"], sinks[5].Events);
        Assert.Equal(5, counters.JoinedFrames);
    }

    [Fact]
    public async Task ManySmallFramesReadTogether_AreHandedOverEachTimeTheBufferWouldOverflow_NeverMoreThan64KiBAtOnce()
    {
        var sink = new RecordingSink();
        await using var client = await OpenStreamIntoAsync(sink);

        // 100 frames of 1,000 bytes in one write: the reader has them all in hand, but holds at most one buffer's worth.
        byte[] payload = Encoding.ASCII.GetBytes(new string('p', 1000));
        var burst = new List<byte>();
        for (int i = 0; i < 100; i++)
        {
            burst.AddRange(RawH2Client.Frame(FrameType.Data, i == 99 ? FrameFlags.EndStream : (byte)0, 1, payload));
        }

        await client.SendAsync(burst.ToArray());
        await sink.Over.Task.WaitAsync(Patience);

        // Joined (far fewer pieces than frames), yet no piece over the 65,536-byte buffer: a read ends a piece too, so
        // where the pieces break depends on how the socket's bytes came in, not how large they are.
        var events = sink.Events;
        Assert.Equal("end", events[^1]);
        int[] pieces = [.. events.SkipLast(1).Select(e => e.Length - "take ".Length)];
        Assert.Equal(100_000, pieces.Sum());
        Assert.All(pieces, piece => Assert.InRange(piece, 1, DataBuffers.Size));
        Assert.InRange(pieces.Length, 2, 10);
    }

    [Fact]
    public Task JoinedFrames_CountedByTheAgent_ShowInMetrics() =>
        Weft.Tests.Telemetry.MeshMetricsTests.AssertProcessCounterExportedAsync(
            "weft_hbone_data_frames_joined_total", HboneCounters.Process.FrameJoined, () => HboneCounters.Process.JoinedFrames);

    [Fact]
    public async Task JoinedData_IsHandedOverBeforeTheReaderWaits_EvenWhenTheTransportSaysMoreIsReadAhead()
    {
        var sink = new RecordingSink();
        await using var client = await OpenStreamIntoAsync(sink, socket => new AlwaysReadAhead(socket));

        // Joined, as the transport claims more is coming; nothing comes, so the reader's next read waits, and the
        // transport's call before it hands the two payloads over.
        byte[] two = [.. RawH2Client.Frame(FrameType.Data, 0, 1, "a"u8), .. RawH2Client.Frame(FrameType.Data, 0, 1, "b"u8)];
        await client.SendAsync(two);
        await sink.Took.Task.WaitAsync(Patience);
        Assert.Equal(["take ab"], sink.Events);
        await client.SendFrameAsync(FrameType.Data, FrameFlags.EndStream, 1, []);
        await sink.Over.Task.WaitAsync(Patience);
        Assert.Equal(["take ab", "end"], sink.Events);
    }

    [Fact]
    public async Task ATunnelsRecordsReadAhead_ReachTheAppsSocketInFewerSendsThanRecords_ByteForByte()
    {
        byte[] answer = RandomNumberGenerator.GetBytes(Answer);
        await RelayOverTlsAsync(async request =>
        {
            var stream = await request.AcceptAsync();
            // The whole answer at once: 16 records of 16 KiB, written back to back. The stream's end only comes after
            // the client's, so what the app receives before then was not held back for the end.
            await ReadExactlyAsync(stream.Input, 1);
            await stream.Output.WriteAsync(answer);
            await ReadToEndAsync(stream.Input);
            await stream.Output.CompleteAsync();
        }, async (pod, startRelay, sends, counters) =>
        {
            startRelay();
            pod.Socket.Send([1]);
            byte[] received = new byte[Answer];
            int got = 0;
            while (got < Answer)
            {
                int n = await pod.ReadAsync(received.AsMemory(got)).AsTask().WaitAsync(Patience);
                Assert.True(n > 0, $"the app's socket ended after {got} of {Answer} bytes");
                got += n;
            }

            Assert.Equal(answer, received);
            // Without joining each record is a send of its own (16 or more); read ahead, they go in at most 64 KiB.
            Assert.True(sends.Sends <= 10, $"{sends.Sends} sends to the app's socket for {Answer / 16384} records ({sends.Sizes})");
            Assert.True(counters.JoinedFrames >= 6, $"{counters.JoinedFrames} frames joined");
            pod.Socket.Shutdown(SocketShutdown.Send);
        });
    }

    [Fact]
    public async Task ARelaysFullReads_CrossTheTunnelAsWholeTlsRecords_NoneLeftWithAFewBytes()
    {
        RecordCounter? records = null;
        var uploaded = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        byte[] upload = RandomNumberGenerator.GetBytes(1024 * 1024);
        await RelayOverTlsAsync(async request =>
        {
            var stream = await request.AcceptAsync();
            uploaded.SetResult(await ReadToEndAsync(stream.Input));
            await stream.Output.CompleteAsync();
        }, async (pod, startRelay, _, _) =>
        {
            // The app writes faster than the relay reads, so the relay's reads are full ones.
            Task written = pod.WriteAsync(upload).AsTask();
            await Task.Delay(100);
            int before = records!.Small;
            startRelay();
            await written.WaitAsync(Patience);
            pod.Socket.Shutdown(SocketShutdown.Send);

            Assert.Equal(upload, await uploaded.Task.WaitAsync(Patience));
            // A DATA frame and its header fill a record: 64 KiB records for 1 MiB, and no record of a few bytes
            // after each 64 KiB read (a frame header's worth that did not fit), as there was with 16 KiB frames.
            Assert.True(records.Full >= 48, $"{records.Full} full records for 1 MiB ({records.Sizes})");
            Assert.True(records.Small - before <= 3, $"{records.Small - before} records under 1 KiB while 1 MiB went through ({records.Sizes})");
        }, serverTransport: socket => records = new RecordCounter(socket));
    }

    /// <summary>
    /// An HBONE stream over <see cref="TlsTunnelAsync"/> served by <paramref name="server"/>, and an app's socket relayed to
    /// it as the proxy relays one. <paramref name="app"/> gets the app's end, the relay's start, its sends and the
    /// connection's counters, and must half-close the app's end; then the app must see the stream's end and the relay end.
    /// </summary>
    private static async Task RelayOverTlsAsync(Func<HboneRequest, Task> server, Func<NetworkStream, Action, SendCounter, HboneCounters, Task> app,
        Func<NetworkStream, Stream>? serverTransport = null)
    {
        var (clientTls, serverTls) = await TlsTunnelAsync(serverTransport);
        using var stop = new CancellationTokenSource();
        Task serving = HboneServer.RunConnectionAsync(serverTls, server, QuietSettings, stop.Token);
        var counters = new HboneCounters();
        (NetworkStream Pod, NetworkStream ProxySide)? pair = null;
        try
        {
            await using var connection = await HboneClientConnection.StartAsync(clientTls, QuietSettings with { Counters = counters }, CancellationToken.None);
            var stream = await connection.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None).WaitAsync(Patience);
            pair = await SocketPairAsync();
            var (pod, proxySide) = pair.Value;
            var sends = new SendCounter();
            var ended = new StreamRelayWatchTests.EndOfRelay();
            await app(pod, () => new StreamRelay(proxySide.Socket, stream, sends, socketIsA: true).Start(ended), sends, counters);
            Assert.Equal(0, await pod.ReadAsync(new byte[1]).AsTask().WaitAsync(Patience));
            await ended.Relay.WaitAsync(Patience);
        }
        finally
        {
            pair?.Pod.Dispose();
            pair?.ProxySide.Dispose();
            await serving.WaitAsync(Patience);
        }
    }

    /// <summary>
    /// A TLS 1.3 pair over loopback: the client as the agent has it (a <see cref="TunnelSocketStream"/> reading ahead, under
    /// a <see cref="TunnelTlsStream"/>, its reader on the read watch once the handshake is done), the server a plain SslStream
    /// over <paramref name="serverTransport"/> (the socket stream itself when null).
    /// </summary>
    private static async Task<(TunnelTlsStream Client, SslStream Server)> TlsTunnelAsync(Func<NetworkStream, Stream>? serverTransport = null)
    {
        using X509Certificate2 certificate = HboneTlsTests.ThrowawayCertificate();
        var (clientTcp, serverTcp) = await SocketPairAsync();
        var serverTls = new SslStream(serverTransport?.Invoke(serverTcp) ?? serverTcp, leaveInnerStreamOpen: false);
        var tunnel = new TunnelSocketStream(clientTcp.Socket, watchTurnTime: TimeSpan.FromMinutes(1));
        var clientTls = new TunnelTlsStream(tunnel);
        Task serverHandshake = serverTls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
        {
            ServerCertificate = certificate,
            EnabledSslProtocols = SslProtocols.Tls13,
            ApplicationProtocols = [SslApplicationProtocol.Http2],
        });
        await clientTls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "",
            EnabledSslProtocols = SslProtocols.Tls13,
            ApplicationProtocols = [SslApplicationProtocol.Http2],
            RemoteCertificateValidationCallback = (_, presented, _, _) => presented is not null && presented.GetCertHashString() == certificate.GetCertHashString(),
        });
        await serverHandshake.WaitAsync(Patience);
        tunnel.ReadOnWatch();
        return (clientTls, serverTls);
    }

    /// <summary>The TLS records a server reads, told apart by their 5-byte headers as the bytes go by.</summary>
    private sealed class RecordCounter(NetworkStream inner) : TransportWrapper(inner)
    {
        // A full record: 16 KiB of plaintext, its content type byte and a 16-byte tag.
        private const int FullRecord = 16_384 + 1 + 16;
        private readonly byte[] _header = new byte[5];
        private readonly List<int> _sizes = [];
        private int _headerHave;
        private int _bodyLeft;

        public int Full
        {
            get { lock (_sizes) { return _sizes.Count(size => size == FullRecord); } }
        }

        public int Small
        {
            get { lock (_sizes) { return _sizes.Count(size => size < 1024); } }
        }

        public string Sizes
        {
            get { lock (_sizes) { return string.Join(", ", _sizes); } }
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            int read = await Inner.ReadAsync(buffer, cancellationToken);
            Count(buffer.Span[..read]);
            return read;
        }

        public override int Read(byte[] buffer, int offset, int count)
        {
            int read = Inner.Read(buffer, offset, count);
            Count(buffer.AsSpan(offset, read));
            return read;
        }

        private void Count(ReadOnlySpan<byte> bytes)
        {
            while (!bytes.IsEmpty)
            {
                if (_bodyLeft > 0)
                {
                    int skip = Math.Min(_bodyLeft, bytes.Length);
                    _bodyLeft -= skip;
                    bytes = bytes[skip..];
                    continue;
                }

                int take = Math.Min(5 - _headerHave, bytes.Length);
                bytes[..take].CopyTo(_header.AsSpan(_headerHave));
                _headerHave += take;
                bytes = bytes[take..];
                if (_headerHave == 5)
                {
                    _headerHave = 0;
                    _bodyLeft = (_header[3] << 8) | _header[4];
                    lock (_sizes)
                    {
                        _sizes.Add(_bodyLeft);
                    }
                }
            }
        }
    }

    /// <summary>A transport that always claims bytes are read ahead, and calls back before every read (any read may wait).</summary>
    private sealed class AlwaysReadAhead(NetworkStream inner) : TransportWrapper(inner), IReadAheadTransport
    {
        private Action? _beforeWait;

        public bool HasReadAhead => true;

        public Action? BeforeWait
        {
            set => _beforeWait = value;
        }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            _beforeWait?.Invoke();
            return Inner.ReadAsync(buffer, cancellationToken);
        }
    }

    /// <summary>A connection whose stream 1 is accepted and delivers into <paramref name="sink"/> until it is over.</summary>
    private static async Task<RawH2Client> OpenStreamIntoAsync(RecordingSink sink, Func<NetworkStream, Stream>? serverTransport = null)
    {
        var accepted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = await RawH2Client.StartAsync(async request =>
        {
            var stream = await request.AcceptAsync();
            stream.DeliverTo(sink);
            accepted.SetResult();
            await sink.Over.Task;
        }, serverTransport: serverTransport);
        try
        {
            await client.SendPrefaceAndSettingsAsync();
            await client.SendFrameAsync(FrameType.Headers, FrameFlags.EndHeaders, 1, RawH2Client.ConnectBlock());
            await accepted.Task.WaitAsync(Patience);
            return client;
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    /// <summary>What a stream's consumer was handed, in order.</summary>
    private sealed class RecordingSink : IInboundSink
    {
        private readonly List<string> _events = [];

        public TaskCompletionSource Over { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>Set once the sink has taken bytes.</summary>
        public TaskCompletionSource Took { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public List<string> Events
        {
            get { lock (_events) { return [.. _events]; } }
        }

        private void Add(string what)
        {
            lock (_events)
            {
                _events.Add(what);
            }
        }

        public int TryTake(ReadOnlySpan<byte> data)
        {
            Add("take " + Encoding.ASCII.GetString(data));
            Took.TrySetResult();
            return data.Length;
        }

        public ValueTask TakeAsync(ReadOnlyMemory<byte> data)
        {
            Add("take " + Encoding.ASCII.GetString(data.Span));
            return default;
        }

        public void End(Exception? error)
        {
            Add(error is null ? "end" : "end " + error.GetType().Name);
            Over.TrySetResult();
        }

        public void Failed(Exception error) => Add("failed");

        public void Aborted()
        {
            Add("aborted");
            Over.TrySetResult();
        }
    }

    /// <summary>Counts the relay's sends toward its socket (the bytes from the tunnel).</summary>
    private sealed class SendCounter : IRelayObserver
    {
        private readonly List<int> _sizes = [];

        public int Sends
        {
            get { lock (_sizes) { return _sizes.Count; } }
        }

        public string Sizes
        {
            get { lock (_sizes) { return string.Join(", ", _sizes); } }
        }

        public void OnBytes(bool fromA, int count)
        {
            if (!fromA)
            {
                lock (_sizes)
                {
                    _sizes.Add(count);
                }
            }
        }
    }
}
