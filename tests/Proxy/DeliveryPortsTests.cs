using System.Net;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

public sealed class DeliveryPortsTests
{
    [Fact]
    public void PortsAreOddInTheRange_AndOneAddressTakesThemInTurnBeforeReusingAny()
    {
        var ports = new DeliveryPorts(32768, 32799, null);
        var client = IPAddress.Parse("10.244.1.7");
        var taken = Enumerable.Range(0, 16).Select(_ => ports.Next(client)).ToList();

        Assert.All(taken, p => Assert.True(p % 2 == 1 && p is >= 32768 and <= 32799, $"port {p}"));
        Assert.Equal(16, taken.Distinct().Count());
        Assert.Equal(taken[0], ports.Next(client));
    }

    [Fact]
    public void ReservedPortsAreNeverTaken()
    {
        var ports = new DeliveryPorts(40000, 40019, DeliveryPorts.ParseReserved("40001,40005-40009\n"));
        var taken = Enumerable.Range(0, 30).Select(_ => ports.Next(IPAddress.Parse("10.0.0.1"))).ToHashSet();

        Assert.Equal([40003, 40011, 40013, 40015, 40017, 40019], taken.Order());
    }

    [Fact]
    public void ReservedPortList_ParsesRangesAndSkipsWhatIsNotAPort()
    {
        Assert.Equal([80, 443, 1000, 1001, 1002], DeliveryPorts.ParseReserved("80, 443,1000-1002,x,70000").Order());
        Assert.Empty(DeliveryPorts.ParseReserved("\n"));
    }
}
