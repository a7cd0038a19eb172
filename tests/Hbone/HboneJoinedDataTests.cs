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
    public Task JoinedFrames_CountedByTheAgent_ShowInMetrics() =>
        Weft.Tests.Telemetry.MeshMetricsTests.AssertProcessCounterExportedAsync(
            "weft_hbone_data_frames_joined_total", HboneCounters.Process.FrameJoined, () => HboneCounters.Process.JoinedFrames);

    [Fact]
    public async Task JoinedData_IsHandedOverBeforeTheReaderWaits_EvenWhenTheTransportSaysMoreIsReadAhead()
    {
        var sink = new RecordingSink();
        var accepted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var client = await RawH2Client.StartAsync(async request =>
        {
            var stream = await request.AcceptAsync();
            stream.DeliverTo(sink);
            accepted.SetResult();
            await sink.Over.Task;
        }, serverTransport: socket => new AlwaysReadAhead(socket));
        await client.SendPrefaceAndSettingsAsync();
        await client.SendFrameAsync(FrameType.Headers, FrameFlags.EndHeaders, 1, RawH2Client.ConnectBlock());
        await accepted.Task.WaitAsync(Patience);

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
        using X509Certificate2 certificate = ThrowawayCertificate();
        var (clientTcp, serverTcp) = await SocketPairAsync();
        var serverTls = new SslStream(serverTcp, leaveInnerStreamOpen: false);
        // The agent's own layers under the client: the tunnel's socket stream, reading ahead, and its TLS stream.
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

        byte[] answer = RandomNumberGenerator.GetBytes(Answer);
        var asked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var stop = new CancellationTokenSource();
        Task server = HboneServer.RunConnectionAsync(serverTls, async request =>
        {
            var stream = await request.AcceptAsync();
            // The whole answer at once: 16 records of 16 KiB, written back to back. The stream's end only comes after
            // the client's, so what the app receives before then was not held back for the end.
            await ReadExactlyAsync(stream.Input, 1);
            await stream.Output.WriteAsync(answer);
            await ReadToEndAsync(stream.Input);
            await stream.Output.CompleteAsync();
        }, QuietSettings, stop.Token);

        var counters = new HboneCounters();
        (NetworkStream Pod, NetworkStream ProxySide)? pair = null;
        try
        {
            await using (var connection = await HboneClientConnection.StartAsync(clientTls, QuietSettings with { Counters = counters }, CancellationToken.None))
            {
                var stream = await connection.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None).WaitAsync(Patience);
                pair = await SocketPairAsync();
                var (pod, proxySide) = pair.Value;
                var sends = new SendCounter();
                var ended = new StreamRelayWatchTests.EndOfRelay();
                new StreamRelay(proxySide.Socket, stream, sends, socketIsA: true).Start(ended);

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
                Assert.Equal(0, await pod.ReadAsync(new byte[1]).AsTask().WaitAsync(Patience));
                await ended.Relay.WaitAsync(Patience);
            }
        }
        finally
        {
            pair?.Pod.Dispose();
            pair?.ProxySide.Dispose();
            await server.WaitAsync(Patience);
        }
    }

    private static X509Certificate2 ThrowawayCertificate()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=weft-hbone-test", key, HashAlgorithmName.SHA256);
        using X509Certificate2 ephemeral = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
        return X509CertificateLoader.LoadPkcs12(ephemeral.Export(X509ContentType.Pkcs12), null);
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
