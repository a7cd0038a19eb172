using System.Security.Cryptography.X509Certificates;
using Weft.Identity;

namespace Weft.Tests.Identity;

public class SpiffeVerifierTests
{
    private static readonly SpiffeId Id = new("cluster.local", "demo", "a");
    private readonly TestCa rootA = TestCa.Root("root-a");
    private readonly TestCa rootB = TestCa.Root("root-b");

    private static SpiffeVerifier Trusting(params TestCa[] roots) =>
        new("cluster.local", new X509Certificate2Collection(roots.Select(r => r.Certificate).ToArray()));

    [Fact]
    public void MultiRootBundle_AcceptsSvidsFromEitherRoot()
    {
        var verifier = Trusting(rootA, rootB);
        var fromA = new SvidIssuer().Issue(rootA.Authority(), Id);
        var fromB = new SvidIssuer().Issue(rootB.Authority(), Id);

        Assert.Equal(Id, verifier.Verify(fromA.Certificate, fromA.Intermediates).Id);
        Assert.Equal(Id, verifier.Verify(fromB.Certificate, fromB.Intermediates).Id);
        Assert.StartsWith("unknown CA", Trusting(rootA).Verify(fromB.Certificate).Reason);
    }

    [Fact]
    public void LeafFromAnIntermediate_NeedsTheIntermediatePresented()
    {
        var svid = new SvidIssuer().Issue(rootA.Intermediate("middle").Authority(), Id);

        Assert.True(Trusting(rootA).Verify(svid.Certificate, svid.Intermediates).Verified);
        Assert.StartsWith("unknown CA", Trusting(rootA).Verify(svid.Certificate).Reason);
    }

    [Fact]
    public void IntermediateInTheBundleAlone_IsNotARoot_ButTheRootsChainIsChecked()
    {
        // An attacker presenting a self-made root as an "intermediate" gains nothing: only bundle roots anchor.
        var rogue = TestCa.Root("rogue");
        var leaf = rogue.Leaf([Id.ToString()]);

        Assert.StartsWith("unknown CA", Trusting(rootA).Verify(leaf, [rogue.Certificate]).Reason);
    }

    [Fact]
    public void OtherTrustDomain_IsRefused_UnlessAllowed()
    {
        var leaf = rootA.Leaf(["spiffe://partner.example/ns/demo/sa/a"]);

        Assert.Equal("trust domain partner.example is not cluster.local", Trusting(rootA).Verify(leaf).Reason);
        var allowing = new SpiffeVerifier("cluster.local", [rootA.Certificate], ["partner.example"]);
        Assert.Equal(new SpiffeId("partner.example", "demo", "a"), allowing.Verify(leaf).Id);
    }

    [Theory]
    [InlineData("https://example.com/x", "is not a SPIFFE ID: scheme must be 'spiffe://'")]
    [InlineData("spiffe://cluster.local/ns/demo", "is not a SPIFFE ID: path must be")]
    public void UriSanThatIsNotAWorkloadId_IsRefused(string uri, string reason)
    {
        Assert.Contains(reason, Trusting(rootA).Verify(rootA.Leaf([uri])).Reason);
    }

    [Fact]
    public void LeafAllowedToSignCertificates_IsRefused()
    {
        var leaf = rootA.Leaf([Id.ToString()], usage: X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyCertSign);

        Assert.Contains("keyCertSign", Trusting(rootA).Verify(leaf).Reason);
    }

    [Fact]
    public void Verification_FollowsTheInjectedClock()
    {
        var clock = new ManualClock();
        var svid = new SvidIssuer(time: clock).Issue(rootA.Authority(), Id);
        var verifier = new SpiffeVerifier("cluster.local", [rootA.Certificate], time: clock);
        Assert.True(verifier.Verify(svid.Certificate).Verified);

        clock.Advance(TimeSpan.FromHours(24) + TimeSpan.FromSeconds(1));

        Assert.StartsWith("certificate expired at", verifier.Verify(svid.Certificate).Reason);
    }

    [Fact]
    public void NoCertificate_IsRefused()
    {
        Assert.Equal("no certificate presented", Trusting(rootA).Verify(null).Reason);
    }
}
