using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Weft.Hbone;

namespace Weft.Tests.Hbone;

/// <summary>Loopback plumbing shared by the HBONE tests: socket pairs, a running server, pipe helpers.</summary>
internal static class HboneTestKit
{
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    public static HboneSettings QuietSettings => new() { KeepaliveInterval = System.Threading.Timeout.InfiniteTimeSpan };

    public static async Task<(NetworkStream Client, NetworkStream Server)> SocketPairAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await client.ConnectAsync(listener.LocalEndPoint!);
        Socket server = await listener.AcceptAsync();
        server.NoDelay = true;
        return (new NetworkStream(client, ownsSocket: true), new NetworkStream(server, ownsSocket: true));
    }

    /// <summary>Reads everything until the peer's END_STREAM.</summary>
    public static async Task<byte[]> ReadToEndAsync(PipeReader reader)
    {
        var all = new ArrayBufferWriter<byte>();
        while (true)
        {
            ReadResult result = await reader.ReadAsync();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                all.Write(segment.Span);
            }
            reader.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return all.WrittenSpan.ToArray();
            }
        }
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes.</summary>
    public static async Task<byte[]> ReadExactlyAsync(PipeReader reader, int count)
    {
        ReadResult result = await reader.ReadAtLeastAsync(count);
        if (result.Buffer.Length < count)
        {
            throw new EndOfStreamException($"got {result.Buffer.Length} of {count} bytes");
        }
        byte[] bytes = result.Buffer.Slice(0, count).ToArray();
        reader.AdvanceTo(result.Buffer.GetPosition(count));
        return bytes;
    }

    public static async Task WriteAsync(PipeWriter writer, string text) => await writer.WriteAsync(Encoding.UTF8.GetBytes(text));

    /// <summary>Copies input to output until END_STREAM, then half-closes: the echo every test server runs.</summary>
    public static async Task EchoAsync(HboneStream stream)
    {
        while (true)
        {
            ReadResult result = await stream.Input.ReadAsync();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                await stream.Output.WriteAsync(segment);
            }
            stream.Input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }
        await stream.Output.CompleteAsync();
    }

    public static Func<HboneRequest, Task> EchoHandler => async request =>
    {
        HboneStream stream = await request.AcceptAsync();
        await EchoAsync(stream);
    };
}

/// <summary>Our server on one end of a loopback socket pair, our client on the other.</summary>
internal sealed class LoopbackTunnel : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop;

    private LoopbackTunnel(HboneClientConnection client, Task server, CancellationTokenSource stop)
    {
        Client = client;
        Server = server;
        _stop = stop;
    }

    public HboneClientConnection Client { get; }

    /// <summary>RunConnectionAsync: must end without throwing once the client is gone.</summary>
    public Task Server { get; }

    /// <param name="clientTransport">What the client reads and writes instead of its socket stream (a test's watcher over it).</param>
    public static async Task<LoopbackTunnel> StartAsync(Func<HboneRequest, Task> onConnect, HboneSettings? serverSettings = null, HboneSettings? clientSettings = null,
        Func<NetworkStream, Stream>? clientTransport = null)
    {
        var (clientStream, serverStream) = await HboneTestKit.SocketPairAsync();
        var stop = new CancellationTokenSource();
        Task server = HboneServer.RunConnectionAsync(serverStream, onConnect, serverSettings ?? HboneTestKit.QuietSettings, stop.Token);
        HboneClientConnection client = await HboneClientConnection.StartAsync(
            clientTransport?.Invoke(clientStream) ?? clientStream, clientSettings ?? HboneTestKit.QuietSettings, CancellationToken.None);
        return new LoopbackTunnel(client, server, stop);
    }

    public Task<HboneStream> ConnectAsync(string authority = "10.0.0.1:8080") =>
        Client.ConnectAsync(authority, [], CancellationToken.None).WaitAsync(HboneTestKit.Patience);

    public async ValueTask DisposeAsync()
    {
        try
        {
            await Client.DisposeAsync();
            await Server.WaitAsync(HboneTestKit.Patience);
        }
        finally
        {
            _stop.Cancel();
            _stop.Dispose();
        }
    }
}
