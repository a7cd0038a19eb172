using System.Net;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>Which client addresses the agent shows the app on delivery (NamespaceSockets.CanDeliverFrom).</summary>
public class TransparentSourceTests
{
    private static readonly LocalPod Pod = new("demo", "b1", "b", "/var/run/netns/x", 1,
        IPAddress.Parse("10.244.2.2"), IPAddress.Parse("fd00:244:2::2"), FailOpen: false);

    [Theory]
    [InlineData("10.244.1.2", "10.244.2.2", true)]
    [InlineData("fd00:244:1::2", "fd00:244:2::2", true)]
    [InlineData("10.244.1.2", "fd00:244:2::2", false)]
    [InlineData("fd00:244:1::2", "10.244.2.2", false)]
    [InlineData("127.0.0.1", "10.244.2.2", false)]
    [InlineData("::1", "fd00:244:2::2", false)]
    [InlineData("0.0.0.0", "10.244.2.2", false)]
    [InlineData("10.244.2.2", "10.244.2.2", false)]
    [InlineData("fd00:244:2::2", "fd00:244:2::2", false)]
    public void ClientAddress_IsShown_OnlyWhenOfTheDestinationsFamily_AndNotLoopbackOrThePodItself(string client, string destination, bool shown)
    {
        Assert.Equal(shown, NamespaceSockets.CanDeliverFrom(Pod, IPAddress.Parse(client), new IPEndPoint(IPAddress.Parse(destination), 8080)));
    }
}
