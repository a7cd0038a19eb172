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

    [Fact]
    public void AnAcceptedSvid_ComingBack_IsAnsweredWithoutAnotherChain_ForTheSameRoleOnly()
    {
        var verifier = Trusting(_rootA);
        var svid = new SvidIssuer().Issue(_rootA.Intermediate("middle").Authority(), Id);

        Assert.Equal(Id, verifier.Verify(svid.Certificate, svid.Intermediates, TlsPeerRole.Client).Id);
        Assert.Equal(0, verifier.Reused);
        Assert.Equal(Id, verifier.Verify(svid.Certificate, svid.Intermediates, TlsPeerRole.Client).Id);
        Assert.Equal(1, verifier.Reused);

        // The same leaf without its intermediate is other bytes: checked afresh, and refused.
        Assert.StartsWith("unknown CA", verifier.Verify(svid.Certificate, null, TlsPeerRole.Client).Reason);

        // A leaf accepted as a client is checked afresh as a server: its EKU allows only clientAuth.
        var clientOnly = _rootA.Leaf([Id.ToString()], extendedUsage: [TestCa.ClientAuth]);
        Assert.True(verifier.Verify(clientOnly, null, TlsPeerRole.Client).Verified);
        Assert.True(verifier.Verify(clientOnly, null, TlsPeerRole.Client).Verified);
        Assert.Contains("lacks serverAuth", verifier.Verify(clientOnly, null, TlsPeerRole.Server).Reason);
        Assert.Equal(2, verifier.Reused);
    }

    [Fact]
    public void ARememberedSvid_IsRefusedOnceItExpires()
    {
        var clock = new ManualClock();
        var verifier = new SpiffeVerifier("cluster.local", [_rootA.Certificate], time: clock);
        var leaf = _rootA.Leaf([Id.ToString()], notBefore: clock.GetUtcNow().AddMinutes(-1), notAfter: clock.GetUtcNow().AddMinutes(2));

        Assert.True(verifier.Verify(leaf).Verified);
        Assert.True(verifier.Verify(leaf).Verified);
        Assert.Equal(1, verifier.Reused);

        clock.Advance(TimeSpan.FromMinutes(3));
        Assert.StartsWith("certificate expired", verifier.Verify(leaf).Reason);
    }

    [Fact]
    public void ARememberedVerdict_IsReusedForTenMinutesAtMost()
    {
        var clock = new ManualClock();
        var verifier = new SpiffeVerifier("cluster.local", [_rootA.Certificate], time: clock);
        var svid = new SvidIssuer(time: clock).Issue(_rootA.Authority(), Id);

        Assert.True(verifier.Verify(svid.Certificate).Verified);
        clock.Advance(SpiffeVerifier.RememberFor - TimeSpan.FromSeconds(1));
        Assert.True(verifier.Verify(svid.Certificate).Verified);
        Assert.Equal(1, verifier.Reused);
        clock.Advance(TimeSpan.FromSeconds(2));
        Assert.True(verifier.Verify(svid.Certificate).Verified);
        Assert.Equal(1, verifier.Reused);
    }

    [Fact]
    public void RefusalsAreNotRemembered_AndTheCacheStaysWithinItsLimit()
    {
        var verifier = Trusting(_rootA);
        var rogue = TestCa.Root("rogue").Leaf([Id.ToString()]);
        Assert.False(verifier.Verify(rogue).Verified);
        Assert.Equal(0, verifier.Remembered);

        var ca = _rootA.Authority();
        var issuer = new SvidIssuer();
        for (var i = 0; i <= SpiffeVerifier.RememberedLimit; i++)
        {
            Assert.True(verifier.Verify(issuer.Issue(ca, Id).Certificate).Verified);
            Assert.InRange(verifier.Remembered, 1, SpiffeVerifier.RememberedLimit);
        }

        // Past the limit the cache started over with the last one.
        Assert.Equal(1, verifier.Remembered);
    }
}
