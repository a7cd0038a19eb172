using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using Weft.Hbone;
using Weft.Hbone.Internal;
using Weft.Hbone.Internal.Hpack;

namespace Weft.Tests.Hbone;

/// <summary>
/// A byte-level HTTP/2 client for poking our server with frames a real client would never send.
/// Talks to HboneServer.RunConnectionAsync over a loopback socket pair.
/// </summary>
internal sealed class RawH2Client : IAsyncDisposable
{
    private readonly NetworkStream _stream;
    private readonly CancellationTokenSource _stop;
    private byte[] _pending = [];

    private RawH2Client(NetworkStream stream, Task server, CancellationTokenSource stop)
    {
        _stream = stream;
        Server = server;
        _stop = stop;
    }

    /// <summary>RunConnectionAsync: must end by itself and never throw for bad input.</summary>
    public Task Server { get; }

    /// <param name="serverTransport">What the server reads and writes instead of its socket stream (a test's wrapper over it).</param>
    public static async Task<RawH2Client> StartAsync(Func<HboneRequest, Task>? onConnect = null, HboneSettings? settings = null,
        Func<NetworkStream, Stream>? serverTransport = null)
    {
        var (client, server) = await HboneTestKit.SocketPairAsync();
        var stop = new CancellationTokenSource();
        Task run = HboneServer.RunConnectionAsync(serverTransport?.Invoke(server) ?? server, onConnect ?? HboneTestKit.EchoHandler, settings ?? HboneTestKit.QuietSettings, stop.Token);
        return new RawH2Client(client, run, stop);
    }

    public async Task SendAsync(ReadOnlyMemory<byte> bytes) => await _stream.WriteAsync(bytes);

    public static byte[] Frame(FrameType type, byte flags, int streamId, ReadOnlySpan<byte> payload, int? claimedLength = null)
    {
        var output = new ArrayBufferWriter<byte>();
        new FrameHeader(claimedLength ?? payload.Length, type, flags, streamId).Write(output.GetSpan(FrameHeader.Size));
        output.Advance(FrameHeader.Size);
        output.Write(payload);
        return output.WrittenSpan.ToArray();
    }

    public Task SendFrameAsync(FrameType type, byte flags, int streamId, ReadOnlySpan<byte> payload) =>
        SendAsync(Frame(type, flags, streamId, payload));

    public async Task SendPrefaceAndSettingsAsync(params (SettingId Id, uint Value)[] settings)
    {
        var output = new ArrayBufferWriter<byte>();
        output.Write(FrameHeader.ClientPreface);
        FrameWriter.WriteSettings(output, settings);
        await SendAsync(output.WrittenMemory);
    }

    public static byte[] ConnectBlock(string authority = "10.0.0.1:80", params (string, string)[] extra)
    {
        var output = new ArrayBufferWriter<byte>();
        HpackEncoder.EncodeField(":method", "CONNECT", output);
        HpackEncoder.EncodeField(":authority", authority, output);
        foreach (var (name, value) in extra)
        {
            HpackEncoder.EncodeField(name, value, output);
        }
        return output.WrittenSpan.ToArray();
    }

    public Task SendPingAsync(ulong opaque)
    {
        Span<byte> payload = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(payload, opaque);
        return SendFrameAsync(FrameType.Ping, 0, 0, payload);
    }

    /// <summary>The next frame from the server, or null once it has closed the connection.</summary>
    public async Task<(FrameHeader Header, byte[] Payload)?> ReadFrameAsync()
    {
        using var cts = new CancellationTokenSource(HboneTestKit.Patience);
        while (true)
        {
            if (_pending.Length >= FrameHeader.Size)
            {
                FrameHeader header = FrameHeader.Read(_pending);
                if (_pending.Length >= FrameHeader.Size + header.Length)
                {
                    byte[] payload = _pending[FrameHeader.Size..(FrameHeader.Size + header.Length)];
                    _pending = _pending[(FrameHeader.Size + header.Length)..];
                    return (header, payload);
                }
            }
            byte[] buffer = new byte[65536];
            int n;
            try
            {
                n = await _stream.ReadAsync(buffer, cts.Token);
            }
            catch (IOException)
            {
                return null; // reset by the server
            }
            if (n == 0)
            {
                return null;
            }
            _pending = [.. _pending, .. buffer.AsSpan(0, n)];
        }
    }

    /// <summary>Reads frames until one of <paramref name="type"/>; fails if the connection ends first.</summary>
    public async Task<(FrameHeader Header, byte[] Payload)> ExpectAsync(FrameType type)
    {
        while (true)
        {
            var frame = await ReadFrameAsync() ?? throw new Xunit.Sdk.XunitException($"connection closed before {type}");
            if (frame.Header.Type == type)
            {
                return frame;
            }
        }
    }

    /// <summary>Reads until GOAWAY, returns its code, and checks the connection then closes.</summary>
    public async Task<Http2ErrorCode> ExpectGoAwayAndCloseAsync()
    {
        var (_, payload) = await ExpectAsync(FrameType.GoAway);
        var code = (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(4));
        while (await ReadFrameAsync() is not null)
        {
        }
        return code;
    }

    /// <summary>Proves the connection is still alive: a PING comes back acknowledged.</summary>
    public async Task ExpectAliveAsync()
    {
        await SendPingAsync(0xC0FFEE);
        while (true)
        {
            var (header, payload) = await ExpectAsync(FrameType.Ping);
            if ((header.Flags & FrameFlags.Ack) != 0 && BinaryPrimitives.ReadUInt64BigEndian(payload) == 0xC0FFEE)
            {
                return;
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stream.Dispose();
        try
        {
            await Server.WaitAsync(HboneTestKit.Patience);
        }
        catch (OperationCanceledException)
        {
        }
        _stop.Cancel();
        _stop.Dispose();
    }
}
