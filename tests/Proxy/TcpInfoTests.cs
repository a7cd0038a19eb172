using System.Net;
using System.Net.Sockets;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

public class TcpInfoTests
{
    [Fact]
    public async Task LoopbackConnection_AfterAnExchange_HasPositiveSmoothedRtt()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint!);
        using var server = await listener.AcceptAsync();

        // A few round trips, so the kernel has RTT samples beyond the handshake.
        var buffer = new byte[64];
        for (var i = 0; i < 5; i++)
        {
            await client.SendAsync(buffer.AsMemory(0, 16));
            await server.ReceiveAsync(buffer);
            await server.SendAsync(buffer.AsMemory(0, 16));
            await client.ReceiveAsync(buffer);
        }

        var info = TcpInfo.TryRead(client);

        Assert.NotNull(info);
        Assert.True(info.Value.Rtt > TimeSpan.Zero && info.Value.Rtt < TimeSpan.FromSeconds(1), $"rtt {info.Value.Rtt}");
        Assert.True(info.Value.RttVar >= TimeSpan.Zero);
    }

    [Fact]
    public void DisposedOrNonTcpSocket_GivesNoRtt()
    {
        var disposed = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        disposed.Dispose();
        using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);

        Assert.Null(TcpInfo.TryRead(disposed));
        Assert.Null(TcpInfo.TryRead(udp));
    }
}
