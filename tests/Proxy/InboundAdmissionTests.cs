using System.Net;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>The node-wide inbound limits: what is admitted, what is refused and why, and that every place comes back.</summary>
public class InboundAdmissionTests
{
    private static readonly IPAddress Peer = IPAddress.Parse("10.244.1.5");
    private static readonly IPAddress OtherPeer = IPAddress.Parse("10.244.1.6");
    private const string Tester = "spiffe://cluster.local/ns/demo/sa/tester";
    private const string Other = "spiffe://cluster.local/ns/demo/sa/a";

    private sealed class Refusals
    {
        public List<(InboundRefusal Reason, string Detail)> Seen { get; } = [];

        public void Add(InboundRefusal reason, string detail)
        {
            lock (Seen)
            {
                Seen.Add((reason, detail));
            }
        }
    }

    [Fact]
    public void ConnectionsFromOneAddress_PastItsLimit_AreRefused_WhileAnotherAddressIsAdmitted()
    {
        var refusals = new Refusals();
        var admission = new InboundAdmission(new InboundLimits(PerPeerIdentity: 100, PerSourceAddress: 3, PerNode: 100), refusals.Add);

        var held = Enumerable.Range(0, 3).Select(_ => admission.TryAdmitConnection(Peer)).ToList();
        var fourth = admission.TryAdmitConnection(Peer, out var why);
        using var other = admission.TryAdmitConnection(OtherPeer);

        Assert.All(held, Assert.NotNull);
        Assert.Null(fourth);
        Assert.Contains("10.244.1.5 holds 3 inbound connections (limit 3", why);
        Assert.NotNull(other);
        Assert.Equal([InboundRefusal.SourceAddress], refusals.Seen.Select(r => r.Reason));
        Assert.Equal(3, admission.CountFor(Peer));
        Assert.Equal(4, admission.NodeCount);

        held[0]!.Dispose();
        using var again = admission.TryAdmitConnection(Peer);
        Assert.NotNull(again);
        foreach (var lease in held)
        {
            lease!.Dispose();
        }
    }

    [Fact]
    public void StreamsOfOneIdentity_PastItsLimit_AreRefused_OverAnyNumberOfTunnels_WhileAnotherIdentityIsAdmitted()
    {
        var refusals = new Refusals();
        var admission = new InboundAdmission(new InboundLimits(PerPeerIdentity: 5, PerSourceAddress: 100, PerNode: 100), refusals.Add);

        // Streams count per identity, not per tunnel: five tunnels from five addresses share one budget.
        var tunnels = Enumerable.Range(1, 5).Select(i => admission.TryAdmitConnection(IPAddress.Parse($"10.244.1.{i}"))!).ToList();
        var streams = Enumerable.Range(0, 5).Select(_ => admission.TryAdmitStream(Tester)).ToList();
        var sixth = admission.TryAdmitStream(Tester, out var why);
        using var other = admission.TryAdmitStream(Other);

        Assert.All(streams, Assert.NotNull);
        Assert.Null(sixth);
        Assert.Contains($"{Tester} holds 5 inbound streams (limit 5", why);
        Assert.NotNull(other);
        Assert.Equal([InboundRefusal.PeerIdentity], refusals.Seen.Select(r => r.Reason));
        Assert.Equal(5, admission.CountFor(Tester));
        Assert.Equal(6, admission.IdentityTotal);
        Assert.Equal(5, admission.AddressTotal);
        Assert.Equal(11, admission.NodeCount);

        foreach (var lease in streams.Concat(tunnels))
        {
            lease!.Dispose();
        }

        Assert.Equal(0, admission.CountFor(Tester));
        Assert.Equal(1, admission.NodeCount);
    }

    [Fact]
    public void NodeTotal_CountsConnectionsAndStreamsTogether_AndRefusesBoth_WhenFull()
    {
        var refusals = new Refusals();
        var admission = new InboundAdmission(new InboundLimits(PerPeerIdentity: 10, PerSourceAddress: 10, PerNode: 4), refusals.Add);

        using var a = admission.TryAdmitConnection(Peer);
        using var b = admission.TryAdmitConnection(OtherPeer);
        using var c = admission.TryAdmitStream(Tester);
        using var d = admission.TryAdmitStream(Other);
        var connection = admission.TryAdmitConnection(IPAddress.Parse("10.244.2.9"), out var connectionWhy);
        var stream = admission.TryAdmitStream("spiffe://cluster.local/ns/demo/sa/new", out var streamWhy);

        Assert.Null(connection);
        Assert.Null(stream);
        Assert.Contains("the node holds 4 inbound connections (limit 4", connectionWhy);
        Assert.Contains("the node holds 4 inbound connections (limit 4", streamWhy);
        Assert.Equal([InboundRefusal.Node, InboundRefusal.Node], refusals.Seen.Select(r => r.Reason));
        Assert.Equal(4, admission.NodeCount);
    }

    [Fact]
    public void ARefusal_TakesNoPlace_AndLeavesNoKeyBehind()
    {
        var admission = new InboundAdmission(new InboundLimits(PerPeerIdentity: 1, PerSourceAddress: 1, PerNode: 1));

        var first = admission.TryAdmitConnection(Peer)!;
        var refused = admission.TryAdmitStream(Tester);

        Assert.Null(refused);
        Assert.Equal(1, admission.NodeCount);
        Assert.Equal(0, admission.CountFor(Tester));
        Assert.Equal(1, admission.TrackedKeys);
        first.Dispose();

        Assert.Equal(0, admission.NodeCount);
        Assert.Equal(0, admission.TrackedKeys);
    }

    [Fact]
    public void DisposingALeaseTwice_GivesItsPlaceBackOnce()
    {
        var admission = new InboundAdmission(new InboundLimits(PerPeerIdentity: 2, PerSourceAddress: 2, PerNode: 10));
        var stream = admission.TryAdmitStream(Tester)!;
        using var kept = admission.TryAdmitStream(Tester);
        var connection = admission.TryAdmitConnection(Peer)!;
        using var keptConnection = admission.TryAdmitConnection(Peer);

        stream.Dispose();
        stream.Dispose();
        connection.Dispose();
        connection.Dispose();

        Assert.Equal(1, admission.CountFor(Tester));
        Assert.Equal(1, admission.CountFor(Peer));
        Assert.Equal(2, admission.NodeCount);
    }

    [Fact]
    public async Task ManyThreadsAdmittingAndReleasing_NeverPassTheLimits_AndEndAtZero()
    {
        var limits = new InboundLimits(PerPeerIdentity: 50, PerSourceAddress: 30, PerNode: 70);
        var admission = new InboundAdmission(limits);
        var identities = new[] { Tester, Other };
        var addresses = new[] { Peer, OtherPeer };
        var peak = 0;
        var overLimit = 0;

        await Task.WhenAll(Enumerable.Range(0, 8).Select(worker => Task.Run(() =>
        {
            for (var i = 0; i < 20_000; i++)
            {
                using var lease = (i + worker) % 2 == 0
                    ? admission.TryAdmitStream(identities[i % 2])
                    : admission.TryAdmitConnection(addresses[i % 2]);
                var node = admission.NodeCount;
                InterlockedMax(ref peak, node);
                if (node > limits.PerNode || admission.CountFor(Peer) > limits.PerSourceAddress || admission.CountFor(Tester) > limits.PerPeerIdentity)
                {
                    Interlocked.Increment(ref overLimit);
                }
            }
        })));

        Assert.Equal(0, overLimit);
        Assert.True(peak <= limits.PerNode, $"peak {peak}");
        Assert.Equal(0, admission.NodeCount);
        Assert.Equal(0, admission.AddressTotal);
        Assert.Equal(0, admission.IdentityTotal);
        Assert.Equal(0, admission.TrackedKeys);
    }

    [Theory]
    [InlineData(20_000, 2_500, 1_250, 10_000)]
    [InlineData(1_048_576, 131_072, 65_536, 524_288)]
    [InlineData(256, 32, 16, 128)]
    public void DefaultLimits_DeriveFromTheDescriptorLimit_LeavingHalfForOutboundAndTheAgent(long descriptors, int identity, int address, int node)
    {
        var limits = InboundLimits.FromDescriptorLimit(descriptors);

        Assert.Equal(new InboundLimits(identity, address, node), limits);
    }

    private static void InterlockedMax(ref int target, int value)
    {
        var current = Volatile.Read(ref target);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref target, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }
}
