using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Weft.Hbone;
using Weft.Hbone.Internal;
using Weft.Hbone.Internal.Hpack;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>
/// The server's limit on concurrent streams per connection: advertised in SETTINGS_MAX_CONCURRENT_STREAMS,
/// streams past it refused with RST_STREAM(REFUSED_STREAM) before the handler runs, and counted.
/// </summary>
public class HboneStreamLimitTests
{
    [Fact]
    public void DefaultLimit_IsOneHundred_LikeTheClientPool()
    {
        Assert.Equal(100, new HboneSettings().MaxConcurrentStreams);
        Assert.Same(HboneCounters.Process, new HboneSettings().Counters);
    }

    [Fact]
    public async Task StreamsPastTheAdvertisedLimit_AreRefusedWithRefusedStream_Counted_AndNeverReachTheHandler()
    {
        const int limit = 4;
        var counters = new HboneCounters();
        int handled = 0;
        await using var client = await RawH2Client.StartAsync(async request =>
        {
            Interlocked.Increment(ref handled);
            await EchoHandler(request);
        }, QuietSettings with { MaxConcurrentStreams = limit, Counters = counters });
        await client.SendPrefaceAndSettingsAsync();

        // The server's SETTINGS announce the limit.
        var (_, settings) = await client.ExpectAsync(FrameType.Settings);
        Assert.Equal((uint)limit, SettingValue(settings, SettingId.MaxConcurrentStreams));

        // Six CONNECTs at once: the first four are answered 200, the last two refused.
        int[] ids = [1, 3, 5, 7, 9, 11];
        foreach (int id in ids)
        {
            await client.SendFrameAsync(FrameType.Headers, FrameFlags.EndHeaders, id, RawH2Client.ConnectBlock());
        }
        var statuses = new Dictionary<int, string>();
        var resets = new Dictionary<int, Http2ErrorCode>();
        var decoder = new HpackDecoder(4096, 16_384);
        while (statuses.Count + resets.Count < ids.Length)
        {
            var frame = await client.ReadFrameAsync() ?? throw new Xunit.Sdk.XunitException("server closed the connection");
            switch (frame.Header.Type)
            {
                case FrameType.Headers:
                    var fields = new List<KeyValuePair<string, string>>();
                    decoder.Decode(frame.Payload, fields);
                    statuses[frame.Header.StreamId] = fields.Single(f => f.Key == ":status").Value;
                    break;
                case FrameType.RstStream:
                    resets[frame.Header.StreamId] = (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(frame.Payload);
                    break;
            }
        }
        Assert.Equal(new Dictionary<int, string> { [1] = "200", [3] = "200", [5] = "200", [7] = "200" }, statuses);
        Assert.Equal(new Dictionary<int, Http2ErrorCode> { [9] = Http2ErrorCode.RefusedStream, [11] = Http2ErrorCode.RefusedStream }, resets);
        Assert.Equal(2, counters.RefusedStreams);
        Assert.Equal(limit, Volatile.Read(ref handled));

        // The accepted streams still work, and the connection stays up.
        await client.SendFrameAsync(FrameType.Data, FrameFlags.EndStream, 1, "hello"u8);
        var (_, echoed) = await ExpectDataAsync(client, 1);
        Assert.Equal("hello", Encoding.ASCII.GetString(echoed));
        await client.ExpectAliveAsync();

        // Once stream 1's handler is done its slot is free again: a new stream is served (retrying the
        // refusal, as a client is allowed to, until the slot frees).
        int next = 13;
        var deadline = DateTime.UtcNow + Patience;
        while (true)
        {
            await client.SendFrameAsync(FrameType.Headers, FrameFlags.EndHeaders, next, RawH2Client.ConnectBlock());
            var answer = await ExpectStreamFrameAsync(client, next);
            if (answer.Header.Type == FrameType.Headers)
            {
                break;
            }
            Assert.Equal(Http2ErrorCode.RefusedStream, (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(answer.Payload));
            Assert.True(DateTime.UtcNow < deadline, "no stream slot came free after stream 1 ended");
            await Task.Delay(20);
            next += 2;
        }
        Assert.Equal(limit + 1, Volatile.Read(ref handled));
    }

    [Fact]
    public async Task PythonH2Client_SeesTheAdvertisedLimit_AndGetsRefusedStreamPastIt()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        int port = ((IPEndPoint)listener.LocalEndPoint!).Port;

        const int limit = 5;
        var counters = new HboneCounters();
        int handled = 0;
        await using var peer = PythonH2Peer.Start("client-limit", port.ToString(), "8");
        using Socket accepted = await listener.AcceptAsync().WaitAsync(Patience);
        Task server = HboneServer.RunConnectionAsync(new NetworkStream(accepted, ownsSocket: false), async request =>
        {
            Interlocked.Increment(ref handled);
            await EchoHandler(request);
        }, QuietSettings with { MaxConcurrentStreams = limit, Counters = counters }, CancellationToken.None);

        string line = await peer.ReadLineAsync("LIMIT ", TimeSpan.FromSeconds(60));
        Assert.Equal(0, await peer.WaitForExitAsync(Patience));
        await server.WaitAsync(Patience);

        using var report = JsonDocument.Parse(line["LIMIT ".Length..]);
        JsonElement root = report.RootElement;
        Assert.Equal(limit, root.GetProperty("max_concurrent_streams").GetInt32());
        Assert.Equal([1, 3, 5, 7, 9], root.GetProperty("accepted").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal([11, 13, 15], root.GetProperty("refused").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Empty(root.GetProperty("other_reset").EnumerateObject());
        Assert.Equal(3, counters.RefusedStreams);
        Assert.Equal(limit, Volatile.Read(ref handled));
    }

    [Fact]
    public async Task Refusals_CountedByTheAgent_ShowInMetrics()
    {
        var (_, metrics) = Weft.Tests.Telemetry.MeshMetricsTests.NewMetrics();
        HboneCounters.Process.StreamRefused(HboneSettings.DefaultMaxConcurrentStreams);
        long counted = HboneCounters.Process.RefusedStreams;

        string scrape = await metrics.RenderAsync();

        // Other tests in this process may refuse streams too: the exported total is at least ours.
        string line = scrape.Split('\n').Single(l => l.StartsWith("weft_hbone_streams_refused_total ", StringComparison.Ordinal));
        double exported = double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(exported >= counted, $"exported {exported}, counted {counted}");
    }

    private static uint? SettingValue(byte[] payload, SettingId id)
    {
        for (int offset = 0; offset + 6 <= payload.Length; offset += 6)
        {
            if (BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(offset)) == (ushort)id)
            {
                return BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(offset + 2));
            }
        }
        return null;
    }

    private static async Task<(FrameHeader Header, byte[] Payload)> ExpectDataAsync(RawH2Client client, int streamId)
    {
        while (true)
        {
            var frame = await client.ExpectAsync(FrameType.Data);
            if (frame.Header.StreamId == streamId && frame.Payload.Length > 0)
            {
                return frame;
            }
        }
    }

    /// <summary>The next HEADERS or RST_STREAM on <paramref name="streamId"/>.</summary>
    private static async Task<(FrameHeader Header, byte[] Payload)> ExpectStreamFrameAsync(RawH2Client client, int streamId)
    {
        while (true)
        {
            var frame = await client.ReadFrameAsync() ?? throw new Xunit.Sdk.XunitException("server closed the connection");
            if (frame.Header.StreamId == streamId && frame.Header.Type is FrameType.Headers or FrameType.RstStream)
            {
                return frame;
            }
        }
    }
}
