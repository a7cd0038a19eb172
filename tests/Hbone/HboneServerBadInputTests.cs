using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Weft.Hbone;
using Weft.Hbone.Internal;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>
/// Hostile or broken clients: each ends only its own connection (GOAWAY with the right code, or a
/// RST_STREAM for a stream-level error), with bounded memory, and RunConnectionAsync returns quietly.
/// </summary>
public class HboneServerBadInputTests
{
    private static byte[] U32(uint value)
    {
        byte[] bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }

    private static byte[] Setting(SettingId id, uint value)
    {
        byte[] bytes = new byte[6];
        BinaryPrimitives.WriteUInt16BigEndian(bytes, (ushort)id);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(2), value);
        return bytes;
    }

    private static async Task AssertServerEndedQuietly(RawH2Client client)
    {
        await client.Server.WaitAsync(Patience); // throws if RunConnectionAsync threw
    }

    [Fact]
    public async Task GarbageInsteadOfPreface_GoAwayProtocolErrorAndClose()
    {
        await using var client = await RawH2Client.StartAsync();
        await client.SendAsync(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        Assert.Equal(Http2ErrorCode.ProtocolError, await client.ExpectGoAwayAndCloseAsync());
        await AssertServerEndedQuietly(client);
    }

    [Fact]
    public async Task FrameLongerThanMaxFrameSize_GoAwayFrameSizeErrorWithoutWaitingForThePayload()
    {
        await using var client = await RawH2Client.StartAsync();
        await client.SendPrefaceAndSettingsAsync();
        // Claims 16 MiB - 1 and sends none of it: the header alone must be enough to refuse it.
        await client.SendAsync(RawH2Client.Frame(FrameType.Data, 0, 1, [], claimedLength: 0xFF_FFFF));
        Assert.Equal(Http2ErrorCode.FrameSizeError, await client.ExpectGoAwayAndCloseAsync());
        await AssertServerEndedQuietly(client);
    }

    [Fact]
    public async Task HugeHeaderBlock_ClosesTheConnectionLongBeforeItIsAllSent()
    {
        await using var client = await RawH2Client.StartAsync();
        await client.SendPrefaceAndSettingsAsync();
        Task<Http2ErrorCode> goAway = client.ExpectGoAwayAndCloseAsync();

        // HEADERS without END_HEADERS, then 16 KiB CONTINUATIONs meant to add up to 64 MiB.
        byte[] literal = new byte[16_384];
        Array.Fill(literal, (byte)'a');
        long sent = 0;
        try
        {
            await client.SendFrameAsync(FrameType.Headers, 0, 1, RawH2Client.ConnectBlock());
            for (int i = 0; i < 4096 && !goAway.IsCompleted; i++)
            {
                await client.SendFrameAsync(FrameType.Continuation, 0, 1, literal);
                sent += literal.Length;
            }
        }
        catch (IOException)
        {
            // The server hung up mid-flood: what we want.
        }
        Assert.Equal(Http2ErrorCode.EnhanceYourCalm, await goAway.WaitAsync(Patience));
        Assert.True(sent < 8 * 1024 * 1024, $"server let {sent} bytes of header block in");
        await AssertServerEndedQuietly(client);
    }

    [Fact]
    public async Task HeaderListOverTheLimit_FromSmallIndexedInput_ClosesTheConnection()
    {
        await using var client = await RawH2Client.StartAsync();
        await client.SendPrefaceAndSettingsAsync();
        // One 4000-byte literal added to the dynamic table, then repeated by index: ~40 KB decoded from ~4 KB.
        var block = new System.Buffers.ArrayBufferWriter<byte>();
        block.Write(RawH2Client.ConnectBlock());
        block.Write<byte>([0x40]);
        Weft.Hbone.Internal.Hpack.HpackEncoder.WriteString(block, "x-big");
        Weft.Hbone.Internal.Hpack.HpackEncoder.WriteString(block, new string('b', 4000));
        for (int i = 0; i < 10; i++)
        {
            block.Write<byte>([0xBE]);
        }
        await client.SendFrameAsync(FrameType.Headers, FrameFlags.EndHeaders, 1, block.WrittenSpan);
        Assert.Equal(Http2ErrorCode.EnhanceYourCalm, await client.ExpectGoAwayAndCloseAsync());
        await AssertServerEndedQuietly(client);
    }

    [Fact]
    public async Task ClientThatNeverReads_IsCutOffByKeepalive_WithBoundedSending()
    {
        long written = 0;
        var handlerDone = new TaskCompletionSource();
        var settings = QuietSettings with { KeepaliveInterval = TimeSpan.FromMilliseconds(300), KeepaliveTimeout = TimeSpan.FromMilliseconds(700) };
        await using var client = await RawH2Client.StartAsync(async request =>
        {
            HboneStream stream = await request.AcceptAsync();
            byte[] chunk = new byte[64 * 1024];
            try
            {
                while (!(await stream.Output.WriteAsync(chunk)).IsCompleted)
                {
                    Interlocked.Add(ref written, chunk.Length);
                }
            }
            finally
            {
                handlerDone.TrySetResult();
            }
        }, settings);

        // Huge windows advertised, a stream opened, and then never a byte read.
        await client.SendPrefaceAndSettingsAsync((SettingId.InitialWindowSize, int.MaxValue));
        await client.SendFrameAsync(FrameType.WindowUpdate, 0, 0, U32(int.MaxValue - 65_535));
        await client.SendFrameAsync(FrameType.Headers, FrameFlags.EndHeaders, 1, RawH2Client.ConnectBlock());

        await client.Server.WaitAsync(Patience);
        await handlerDone.Task.WaitAsync(Patience);
        // Socket buffers plus our per-stream send buffer, not the 2 GiB the client's windows allowed.
        Assert.InRange(Interlocked.Read(ref written), 0, 64L * 1024 * 1024);
    }

    [Fact]
    public async Task DataBeyondTheStreamWindow_IsAFlowControlError()
    {
        var release = new TaskCompletionSource();
        await using var client = await RawH2Client.StartAsync(async request =>
        {
            await request.AcceptAsync();
            await release.Task; // accepts, never reads
        });
        await client.SendPrefaceAndSettingsAsync();
        await client.SendFrameAsync(FrameType.Headers, FrameFlags.EndHeaders, 1, RawH2Client.ConnectBlock());
        byte[] chunk = new byte[16_384];
        for (int i = 0; i < 256; i++) // exactly the 4 MiB stream window, never consumed
        {
            await client.SendFrameAsync(FrameType.Data, 0, 1, chunk);
        }
        await client.ExpectAliveAsync();
        await client.SendFrameAsync(FrameType.Data, 0, 1, [1]);
        Assert.Equal(Http2ErrorCode.FlowControlError, await client.ExpectGoAwayAndCloseAsync());
        release.SetResult();
        await client.Server.WaitAsync(Patience);
    }

    public static TheoryData<string, byte[], Http2ErrorCode> ConnectionErrors => new()
    {
        { "DATA on stream 0", RawH2Client.Frame(FrameType.Data, 0, 0, [1, 2]), Http2ErrorCode.ProtocolError },
        { "DATA on an idle stream", RawH2Client.Frame(FrameType.Data, 0, 1, [1, 2]), Http2ErrorCode.ProtocolError },
        { "SETTINGS of 5 bytes", RawH2Client.Frame(FrameType.Settings, 0, 0, [0, 4, 0, 0, 0]), Http2ErrorCode.FrameSizeError },
        { "SETTINGS on a stream", RawH2Client.Frame(FrameType.Settings, 0, 1, []), Http2ErrorCode.ProtocolError },
        { "SETTINGS ACK with payload", RawH2Client.Frame(FrameType.Settings, FrameFlags.Ack, 0, Setting(SettingId.MaxFrameSize, 16384)), Http2ErrorCode.FrameSizeError },
        { "MAX_FRAME_SIZE below 16384", RawH2Client.Frame(FrameType.Settings, 0, 0, Setting(SettingId.MaxFrameSize, 1000)), Http2ErrorCode.ProtocolError },
        { "INITIAL_WINDOW_SIZE above 2^31-1", RawH2Client.Frame(FrameType.Settings, 0, 0, Setting(SettingId.InitialWindowSize, 0x8000_0000)), Http2ErrorCode.FlowControlError },
        { "ENABLE_PUSH of 2", RawH2Client.Frame(FrameType.Settings, 0, 0, Setting(SettingId.EnablePush, 2)), Http2ErrorCode.ProtocolError },
        { "PING of 7 bytes", RawH2Client.Frame(FrameType.Ping, 0, 0, new byte[7]), Http2ErrorCode.FrameSizeError },
        { "PING on a stream", RawH2Client.Frame(FrameType.Ping, 0, 1, new byte[8]), Http2ErrorCode.ProtocolError },
        { "connection WINDOW_UPDATE of 0", RawH2Client.Frame(FrameType.WindowUpdate, 0, 0, U32(0)), Http2ErrorCode.ProtocolError },
        { "connection window overflow", RawH2Client.Frame(FrameType.WindowUpdate, 0, 0, U32(int.MaxValue)), Http2ErrorCode.FlowControlError },
        { "WINDOW_UPDATE of 3 bytes", RawH2Client.Frame(FrameType.WindowUpdate, 0, 0, [0, 0, 1]), Http2ErrorCode.FrameSizeError },
        { "RST_STREAM on stream 0", RawH2Client.Frame(FrameType.RstStream, 0, 0, U32(8)), Http2ErrorCode.ProtocolError },
        { "RST_STREAM on an idle stream", RawH2Client.Frame(FrameType.RstStream, 0, 5, U32(8)), Http2ErrorCode.ProtocolError },
        { "GOAWAY of 4 bytes", RawH2Client.Frame(FrameType.GoAway, 0, 0, U32(0)), Http2ErrorCode.FrameSizeError },
        { "HEADERS on an even stream", RawH2Client.Frame(FrameType.Headers, FrameFlags.EndHeaders, 2, RawH2Client.ConnectBlock()), Http2ErrorCode.ProtocolError },
        { "HEADERS with a bad HPACK index", RawH2Client.Frame(FrameType.Headers, FrameFlags.EndHeaders, 1, [0x80]), Http2ErrorCode.CompressionError },
        { "HEADERS padding longer than the frame", RawH2Client.Frame(FrameType.Headers, FrameFlags.EndHeaders | FrameFlags.Padded, 1, [200, 0x82]), Http2ErrorCode.ProtocolError },
        { "CONTINUATION without HEADERS", RawH2Client.Frame(FrameType.Continuation, FrameFlags.EndHeaders, 1, RawH2Client.ConnectBlock()), Http2ErrorCode.ProtocolError },
        { "PING inside a header block", [.. RawH2Client.Frame(FrameType.Headers, 0, 1, RawH2Client.ConnectBlock()), .. RawH2Client.Frame(FrameType.Ping, 0, 0, new byte[8])], Http2ErrorCode.ProtocolError },
        { "PUSH_PROMISE from a client", RawH2Client.Frame(FrameType.PushPromise, FrameFlags.EndHeaders, 1, [0, 0, 0, 2]), Http2ErrorCode.ProtocolError },
    };

    [Theory]
    [MemberData(nameof(ConnectionErrors))]
    public async Task MalformedFrame_IsAConnectionErrorWithTheRfcCode(string what, byte[] frames, Http2ErrorCode expected)
    {
        await using var client = await RawH2Client.StartAsync();
        await client.SendPrefaceAndSettingsAsync();
        await client.SendAsync(frames);
        Assert.True(expected == await client.ExpectGoAwayAndCloseAsync(), what);
        await AssertServerEndedQuietly(client);
    }

    [Fact]
    public async Task FirstFrameNotSettings_IsAProtocolError()
    {
        await using var client = await RawH2Client.StartAsync();
        await client.SendAsync(FrameHeader.ClientPreface.ToArray());
        await client.SendPingAsync(1);
        Assert.Equal(Http2ErrorCode.ProtocolError, await client.ExpectGoAwayAndCloseAsync());
    }

    public static TheoryData<string, byte[], Http2ErrorCode> StreamErrors => new()
    {
        { "CONNECT with :path", RawH2Client.Frame(FrameType.Headers, FrameFlags.EndHeaders, 1, RawH2Client.ConnectBlock("10.0.0.1:80", (":path", "/"))), Http2ErrorCode.ProtocolError },
        { "GET instead of CONNECT", RawH2Client.Frame(FrameType.Headers, FrameFlags.EndHeaders, 1, [0x82, 0x86, 0x84, 0x41, 0x01, (byte)'x']), Http2ErrorCode.ProtocolError },
        { "CONNECT without :authority", RawH2Client.Frame(FrameType.Headers, FrameFlags.EndHeaders, 1, ConnectWithout()), Http2ErrorCode.ProtocolError },
        { "uppercase field name", RawH2Client.Frame(FrameType.Headers, FrameFlags.EndHeaders, 1, RawH2Client.ConnectBlock("10.0.0.1:80", ("X-Up", "1"))), Http2ErrorCode.ProtocolError },
        { "connection-specific field", RawH2Client.Frame(FrameType.Headers, FrameFlags.EndHeaders, 1, RawH2Client.ConnectBlock("10.0.0.1:80", ("connection", "close"))), Http2ErrorCode.ProtocolError },
        { "PRIORITY of 4 bytes", RawH2Client.Frame(FrameType.Priority, 0, 3, U32(0)), Http2ErrorCode.FrameSizeError },
    };

    private static byte[] ConnectWithout()
    {
        var output = new System.Buffers.ArrayBufferWriter<byte>();
        Weft.Hbone.Internal.Hpack.HpackEncoder.EncodeField(":method", "CONNECT", output);
        return output.WrittenSpan.ToArray();
    }

    [Theory]
    [MemberData(nameof(StreamErrors))]
    public async Task MalformedRequest_ResetsOnlyThatStream(string what, byte[] frames, Http2ErrorCode expected)
    {
        await using var client = await RawH2Client.StartAsync();
        await client.SendPrefaceAndSettingsAsync();
        await client.SendAsync(frames);
        var (header, payload) = await client.ExpectAsync(FrameType.RstStream);
        Assert.True(expected == (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(payload), what);
        await client.ExpectAliveAsync();
    }

    [Fact]
    public async Task UnknownFrameTypeAndPriority_AreIgnored()
    {
        await using var client = await RawH2Client.StartAsync();
        await client.SendPrefaceAndSettingsAsync();
        await client.SendFrameAsync((FrameType)0x20, 0xFF, 7, new byte[100]);
        await client.SendFrameAsync(FrameType.Priority, 0, 9, [0, 0, 0, 1, 16]);
        await client.ExpectAliveAsync();
    }

    [Fact]
    public async Task PingFlood_FromAClientThatNeverReads_IsCutOff()
    {
        await using var client = await RawH2Client.StartAsync();
        await client.SendPrefaceAndSettingsAsync();
        byte[] pings = Enumerable.Range(0, 4096).SelectMany(_ => RawH2Client.Frame(FrameType.Ping, 0, 0, new byte[8])).ToArray();
        try
        {
            for (int i = 0; i < 200; i++)
            {
                await client.SendAsync(pings);
            }
        }
        catch (IOException)
        {
        }
        await client.Server.WaitAsync(Patience);
    }
}
