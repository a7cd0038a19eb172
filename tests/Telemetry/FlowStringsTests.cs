using Weft.Telemetry;

namespace Weft.Tests.Telemetry;

public sealed class FlowStringsTests
{
    [Fact]
    public void SameName_GivesOneInstance()
    {
        var first = FlowStrings.Workload("demo", "shared-name-test");
        var second = FlowStrings.Workload("demo", "shared-name-test");

        Assert.Equal("demo/shared-name-test", first);
        Assert.Same(first, second);
    }

    [Fact]
    public void NamesPastTheCapacity_AreKeptAsGiven_AndTheTableStopsGrowing()
    {
        // A stream of names never seen again (say, a peer's ever-new identities) must not grow the table without bound.
        for (var i = 0; i < FlowStrings.Capacity + 1000; i++)
        {
            var name = $"spiffe://cluster.local/ns/flood/sa/sa-{i}";
            Assert.Equal(name, FlowStrings.Shared(name));
        }

        Assert.InRange(FlowStrings.Count, 1, FlowStrings.Capacity + 64);
        var late = new string("spiffe://cluster.local/ns/flood/sa/late".ToCharArray());
        Assert.Same(late, FlowStrings.Shared(late));
    }
}
