using Weft.Ca;
using Weft.Identity;

namespace Weft.Tests.Ca;

/// <summary>
/// The agent's identity manager asking a real CA service (Kestrel, TLS, gRPC on loopback) for its pods'
/// certificates with node1's credential: web (demo) runs on node1, api (demo) only on node2.
/// </summary>
public sealed class AgentCaClientTests : IAsyncLifetime
{
    private static readonly TestPod Web = new("web-1", "demo", "web", "node1", "10.244.1.2");
    private static readonly TestPod Api = new("api-1", "demo", "api", "node2", "10.244.2.2");
    private static readonly SpiffeId WebId = new(CaTestServer.TrustDomain, "demo", "web");
    private static readonly SpiffeId ApiId = new(CaTestServer.TrustDomain, "demo", "api");

    private CaTestServer _ca = null!;
    private string _work = null!;

    public async Task InitializeAsync()
    {
        _ca = await CaTestServer.StartAsync([Web, Api]);
        _work = Directory.CreateTempSubdirectory("weft-ca-client-").FullName;
    }

    public async Task DisposeAsync()
    {
        await _ca.DisposeAsync();
        Directory.Delete(_work, recursive: true);
    }

    private IdentityManager StartAgent(TimeSpan? lifetime = null, TimeSpan? wait = null)
    {
        var node = CaCertificates.WriteNodeCertificate(_ca.Authority, new NodeIdentity(CaTestServer.TrustDomain, "node1"), Path.Combine(_work, "node1"), TimeSpan.FromHours(1));
        var bundle = Path.Combine(_work, "bundle.crt");
        File.WriteAllText(bundle, _ca.Root.ExportCertificatePem());
        var service = new CaServiceOptions(new Uri($"https://127.0.0.1:{_ca.Server.Endpoint.Port}"), node.CertificatePath, node.KeyPath);
        return IdentityManager.Start(new IdentityOptions(CaTestServer.TrustDomain, null, new CaServiceClient(service))
        {
            TrustBundlePath = bundle,
            SvidLifetime = lifetime ?? SvidIssuer.DefaultLifetime,
            IssuanceWait = wait ?? TimeSpan.FromSeconds(30),
        });
    }

    [Fact]
    public async Task FirstPodOfAServiceAccount_GetsItsCertificateFromTheCa_WithTheKeyKeptOnTheNode()
    {
        using var identities = StartAgent();
        Assert.False(identities.SignsLocally);

        identities.SetAllowed([WebId]);
        var svid = await identities.GetAsync(WebId);

        Assert.Equal(WebId, svid.Id);
        Assert.True(svid.Certificate.HasPrivateKey);
        Assert.True(identities.Verifier.Verify(svid.Certificate, svid.Intermediates, TlsPeerRole.Server).Verified);
        Assert.Equal(_ca.Root.Subject, svid.Certificate.Issuer);
        Assert.Equal(1, identities.CaRequestsOk);
        Assert.Equal(1, _ca.Server.Metrics.IssuedCount);
    }

    [Fact]
    public async Task ConcurrentConnections_OfANewPod_ShareOneIssuance()
    {
        using var identities = StartAgent();
        identities.SetAllowed([WebId]);

        var svids = await Task.WhenAll(Enumerable.Range(0, 32).Select(_ => identities.GetAsync(WebId).AsTask()));

        Assert.All(svids, s => Assert.Same(svids[0], s));
        Assert.Equal(1, _ca.Server.Metrics.IssuedCount);
        Assert.Equal(1, identities.CaRequestsOk);
    }

    [Fact]
    public async Task APodTheCaWillNotCertify_WaitsTheBound_ThenFailsAsNoCertificate_AndRetriesWithBackoff()
    {
        // The agent believes api runs here; the CA, deciding by its own inventory, sees it only on node2.
        using var identities = StartAgent(wait: TimeSpan.FromSeconds(2));
        identities.SetAllowed([ApiId]);

        var started = DateTime.UtcNow;
        var e = await Assert.ThrowsAsync<IdentityException>(() => identities.GetAsync(ApiId).AsTask());

        Assert.True(e.CertificateUnavailable);
        Assert.Contains($"no certificate for {ApiId} yet", e.Message);
        Assert.Contains("PermissionDenied", e.Message);
        Assert.True(DateTime.UtcNow - started >= TimeSpan.FromSeconds(1.9), "it waited for the CA before failing");
        Assert.True(identities.CaRequestsFailed >= 1);
        Assert.True(_ca.Server.Metrics.RefusedCount(RefusalReason.NoPodOnNode) >= 1);
        var failedSoFar = identities.CaRequestsFailed;
        await CaTestPki.WaitUntilAsync(() => identities.CaRequestsFailed > failedSoFar);
        Assert.Empty(identities.Current);
    }

    [Fact]
    public async Task HeldCertificate_IsServedWhileRenewalFails_AndRenewalRecoversWhenTheCaAgrees()
    {
        // Renewal starts at half life; the held certificate must outlive the refused renewal by a margin a loaded
        // machine keeps (with 12 s, a CI run once saw it expire first, and the agent then rightly had nothing to serve).
        using var identities = StartAgent(lifetime: TimeSpan.FromSeconds(30));
        identities.SetAllowed([WebId]);
        var held = await identities.GetAsync(WebId);

        // The CA stops agreeing (web's pod is gone from its inventory): renewal at half life fails.
        _ca.ReplacePods([Api]);
        await CaTestPki.WaitUntilAsync(() => identities.CaRequestsFailed >= 1);

        Assert.True(DateTimeOffset.UtcNow >= held.RenewAt);
        Assert.Same(held, await identities.GetAsync(WebId));
        Assert.Equal(0, identities.Renewals);

        _ca.ReplacePods([Web, Api]);
        await CaTestPki.WaitUntilAsync(() => identities.Renewals == 1);

        var renewed = await identities.GetAsync(WebId);
        Assert.NotSame(held, renewed);
        Assert.True(renewed.NotAfter > held.NotAfter);
        Assert.Equal(2, identities.CaRequestsOk);
    }

    [Fact]
    public void AMissingNodeCredential_StopsTheStart_WithTheFileNamed()
    {
        var service = new CaServiceOptions(new Uri("https://127.0.0.1:1"), Path.Combine(_work, "absent.crt"), Path.Combine(_work, "absent.key"));

        var e = Assert.Throws<IdentityException>(() => new CaServiceClient(service));

        Assert.Contains("absent.crt", e.Message);
    }
}
