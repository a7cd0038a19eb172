using System.Net;
using System.Net.Sockets;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

public sealed class DeliveryPortsTests
{
    private static readonly IPAddress Client = IPAddress.Parse("10.244.1.7");

    [Fact]
    public void PortsAreOddInTheRange_AndOneAddressTakesThemInTurn_ReturnedOnesComeRoundLast()
    {
        var ports = new DeliveryPorts(32768, 32799, null);
        var taken = Enumerable.Range(0, 16).Select(_ => ports.Take(Client)).ToList();

        Assert.All(taken, p => Assert.True(p % 2 == 1 && p is >= 32768 and <= 32799, $"port {p}"));
        Assert.Equal(16, taken.Distinct().Count());

        // every port held: none left for this address (the kernel is asked), another address has its own
        Assert.Equal(0, ports.Take(Client));
        Assert.NotEqual(0, ports.Take(IPAddress.Parse("10.244.1.8")));

        // given back in another order, they come round in the turn's order, not the order they were returned
        foreach (var port in Enumerable.Reverse(taken))
        {
            ports.Return(Client, port);
        }

        Assert.Equal(taken, Enumerable.Range(0, 16).Select(_ => ports.Take(Client)));
    }

    [Fact]
    public void HeldPortsAreSkipped_TheTurnGoesOnPastThem()
    {
        var ports = new DeliveryPorts(40000, 40039, null);
        var held = Enumerable.Range(0, 15).Select(_ => ports.Take(Client)).ToList();
        var churn = ports.Take(Client);
        for (var i = 0; i < 50; i++)
        {
            // one port at a time, each given back before the next: the held fifteen are never handed out again
            ports.Return(Client, churn);
            churn = ports.Take(Client);
            Assert.DoesNotContain(churn, held);
            Assert.NotEqual(0, churn);
        }
    }

    [Fact]
    public void AnAddressWithoutDeliveriesIsForgotten()
    {
        var ports = new DeliveryPorts(32768, 60999, null);
        var taken = Enumerable.Range(0, 1000).Select(i => (From: IPAddress.Parse($"10.0.{i / 250}.{i % 250}"), Port: 0)).ToList();
        taken = [.. taken.Select(t => (t.From, ports.Take(t.From)))];
        Assert.Equal(1000, ports.AddressesHolding);

        foreach (var (from, port) in taken)
        {
            ports.Return(from, port);
        }

        Assert.Equal(0, ports.AddressesHolding);
    }

    [Fact]
    public void ReservedPortsAreNeverTaken()
    {
        var ports = new DeliveryPorts(40000, 40019, DeliveryPorts.ParseReserved("40001,40005-40009\n"));
        var from = IPAddress.Parse("10.0.0.1");
        var taken = new HashSet<int>();
        for (var i = 0; i < 30; i++)
        {
            var port = ports.Take(from);
            taken.Add(port);
            ports.Return(from, port);
        }

        Assert.Equal([40003, 40011, 40013, 40015, 40017, 40019], taken.Order());
    }

    [Fact]
    public void ReservedPortList_ParsesRangesAndSkipsWhatIsNotAPort()
    {
        Assert.Equal([80, 443, 1000, 1001, 1002], DeliveryPorts.ParseReserved("80, 443,1000-1002,x,70000").Order());
        Assert.Empty(DeliveryPorts.ParseReserved("\n"));
    }

    /// <summary>
    /// Real sockets on loopback. .NET binds with SO_REUSEADDR, so bind() to a port a connected socket holds succeeds
    /// and connect() to the same destination then fails (EADDRNOTAVAIL): the turn must skip held ports itself. Here
    /// every port of a small range is held by a connection, one is closed, and the next delivery takes exactly that
    /// one and connects.
    /// </summary>
    [Fact]
    public async Task RealSockets_WithEveryPortHeld_TheNextDeliveryTakesTheOneFreedAndConnects()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(64);
        var ports = new DeliveryPorts(61100, 61131, null);
        var open = new List<(PodSocket Client, Socket Server)>();
        try
        {
            for (var i = 0; i < 16; i++)
            {
                open.Add(await ConnectAsync(ports, listener));
            }

            Assert.Equal(16, open.Select(o => ((IPEndPoint)o.Client.LocalEndPoint!).Port).Distinct().Count());
            Assert.All(open, o => Assert.InRange(((IPEndPoint)o.Client.LocalEndPoint!).Port, 61100, 61131));

            // the server closes first, so the client's port is not left in TIME_WAIT
            var freed = ((IPEndPoint)open[5].Client.LocalEndPoint!).Port;
            open[5].Server.Dispose();
            await open[5].Client.ReceiveAsync(new byte[1]);
            open[5].Client.Dispose();
            open[5] = await ConnectAsync(ports, listener);

            Assert.Equal(freed, ((IPEndPoint)open[5].Client.LocalEndPoint!).Port);
        }
        finally
        {
            foreach (var (client, server) in open)
            {
                server.Dispose();
                client.Dispose();
            }
        }

        Assert.Equal(0, ports.AddressesHolding);
    }

    private static async Task<(PodSocket, Socket)> ConnectAsync(DeliveryPorts ports, Socket listener)
    {
        var client = new PodSocket(AddressFamily.InterNetwork);
        ports.Bind(client, IPAddress.Loopback, kernelPicks: false);
        await client.ConnectAsync(listener.LocalEndPoint!);
        return (client, await listener.AcceptAsync());
    }
}
