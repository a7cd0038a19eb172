using System.Security.Cryptography.X509Certificates;
using Weft.Identity;

namespace Weft.Tests.Identity;

public class SpiffeVerifierTests
{
    private static readonly SpiffeId Id = new("cluster.local", "demo", "a");
    private readonly TestCa _rootA = TestCa.Root("root-a");
    private readonly TestCa _rootB = TestCa.Root("root-b");

    private static SpiffeVerifier Trusting(params TestCa[] roots) =>
        new("cluster.local", new X509Certificate2Collection(roots.Select(r => r.Certificate).ToArray()));

    [Fact]
    public void MultiRootBundle_AcceptsSvidsFromEitherRoot()
    {
        var verifier = Trusting(_rootA, _rootB);
        var fromA = new SvidIssuer().Issue(_rootA.Authority(), Id);
        var fromB = new SvidIssuer().Issue(_rootB.Authority(), Id);

        Assert.Equal(Id, verifier.Verify(fromA.Certificate, fromA.Intermediates).Id);
        Assert.Equal(Id, verifier.Verify(fromB.Certificate, fromB.Intermediates).Id);
        Assert.StartsWith("unknown CA", Trusting(_rootA).Verify(fromB.Certificate).Reason);
    }

    [Fact]
    public void LeafFromAnIntermediate_NeedsTheIntermediatePresented()
    {
        var svid = new SvidIssuer().Issue(_rootA.Intermediate("middle").Authority(), Id);

        Assert.True(Trusting(_rootA).Verify(svid.Certificate, svid.Intermediates).Verified);
        Assert.StartsWith("unknown CA", Trusting(_rootA).Verify(svid.Certificate).Reason);
    }

    [Fact]
    public void IntermediateInTheBundleAlone_IsNotARoot_ButTheRootsChainIsChecked()
    {
        // An attacker presenting a self-made root as an "intermediate" gains nothing: only bundle roots anchor.
        var rogue = TestCa.Root("rogue");
        var leaf = rogue.Leaf([Id.ToString()]);

        Assert.StartsWith("unknown CA", Trusting(_rootA).Verify(leaf, [rogue.Certificate]).Reason);
    }

    [Fact]
    public void OtherTrustDomain_IsRefused_UnlessAllowed()
    {
        var leaf = _rootA.Leaf(["spiffe://partner.example/ns/demo/sa/a"]);

        Assert.Equal("trust domain partner.example is not cluster.local", Trusting(_rootA).Verify(leaf).Reason);
        var allowing = new SpiffeVerifier("cluster.local", [_rootA.Certificate], ["partner.example"]);
        Assert.Equal(new SpiffeId("partner.example", "demo", "a"), allowing.Verify(leaf).Id);
    }

    [Theory]
    [InlineData("https://example.com/x", "is not a SPIFFE ID: scheme must be 'spiffe://'")]
    [InlineData("spiffe://cluster.local/ns/demo", "is not a SPIFFE ID: path must be")]
    public void UriSanThatIsNotAWorkloadId_IsRefused(string uri, string reason)
    {
        Assert.Contains(reason, Trusting(_rootA).Verify(_rootA.Leaf([uri])).Reason);
    }

    [Fact]
    public void LeafAllowedToSignCertificates_IsRefused()
    {
        var leaf = _rootA.Leaf([Id.ToString()], usage: X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyCertSign);

        Assert.Contains("keyCertSign", Trusting(_rootA).Verify(leaf).Reason);
    }

    [Fact]
    public void Verification_FollowsTheInjectedClock()
    {
        var clock = new ManualClock();
        var svid = new SvidIssuer(time: clock).Issue(_rootA.Authority(), Id);
        var verifier = new SpiffeVerifier("cluster.local", [_rootA.Certificate], time: clock);
        Assert.True(verifier.Verify(svid.Certificate).Verified);

        clock.Advance(TimeSpan.FromHours(24) + TimeSpan.FromSeconds(1));

        Assert.StartsWith("certificate expired at", verifier.Verify(svid.Certificate).Reason);
    }

    [Fact]
    public void NoCertificate_IsRefused()
    {
        Assert.Equal("no certificate presented", Trusting(_rootA).Verify(null).Reason);
    }
}
