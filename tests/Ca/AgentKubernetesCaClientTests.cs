using System.Net;
using k8s;
using k8s.Models;
using Weft.Ca;
using Weft.Identity;
using Weft.Inventory;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Tests.Ca;

/// <summary>
/// The agent's identity manager in Kubernetes mode: it sends the projected token from its token file as bearer
/// to a CA that checks it with TokenReviews against the fake API server (web runs on node1, next to the agent pod).
/// </summary>
public sealed class AgentKubernetesCaClientTests : IAsyncLifetime
{
    private static readonly SpiffeId WebId = new(CaTestServer.TrustDomain, "demo", "web");
    private static readonly SpiffeId DbId = new(CaTestServer.TrustDomain, "data", "db");

    private string _work = null!;
    private FakeApiServer _api = null!;
    private IKubernetes _client = null!;
    private KubernetesPodIndex _pods = null!;
    private CertificateAuthority _authority = null!;
    private CaServer _ca = null!;

    public async Task InitializeAsync()
    {
        _work = Directory.CreateTempSubdirectory("weft-ca-k8s-client-").FullName;
        _api = FakeApiServer.Start();
        foreach (var (ns, name, account) in new[] { ("weft-system", "weft-agent-node1", "weft-agent"), ("demo", "web-1", "web"), ("data", "db-1", "db") })
        {
            _api.Apply(new V1Pod
            {
                Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns },
                Spec = new V1PodSpec { NodeName = "node1", ServiceAccountName = account, Containers = [new V1Container { Name = "app", Image = "example/app:1" }] },
                Status = new V1PodStatus { Phase = "Running" },
            });
        }

        _client = _api.Client();
        _pods = KubernetesPodIndex.Start(_client);
        await _pods.WaitForListAsync().WaitAsync(CaTestPki.Patience);
        _authority = CertificateAuthority.Load(SelfSignedRoot.Write(Path.Combine(_work, "root"), CaTestServer.TrustDomain));
        _ca = await CaServer.StartAsync(_authority, _client, _pods, new KubernetesCallerOptions(),
            new CaServerOptions { TrustDomain = CaTestServer.TrustDomain, Listen = new IPEndPoint(IPAddress.Loopback, 0) });
    }

    public async Task DisposeAsync()
    {
        await _ca.DisposeAsync();
        _pods.Dispose();
        _client.Dispose();
        await _api.DisposeAsync();
        Directory.Delete(_work, recursive: true);
    }

    [Fact]
    public async Task AgentWithItsProjectedToken_GetsItsPodsCertificate_WithoutANodeCertificate()
    {
        var tokenFile = WriteToken(_api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["weft-ca"]));
        using var identities = StartAgent(tokenFile, TimeSpan.FromSeconds(30));
        identities.SetAllowed([WebId]);

        var svid = await identities.GetAsync(WebId);

        Assert.Equal(WebId, svid.Id);
        Assert.True(svid.Certificate.HasPrivateKey);
        Assert.True(identities.Verifier.Verify(svid.Certificate, svid.Intermediates, TlsPeerRole.Client).Verified);
        Assert.Equal(1, _ca.Metrics.IssuedCount);
        Assert.Equal(1, _api.TokenReviews);
    }

    [Fact]
    public async Task RotatedTokenFile_IsReadForTheNextRequest()
    {
        var tokenFile = WriteToken(_api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["weft-ca"]));
        using var identities = StartAgent(tokenFile, TimeSpan.FromSeconds(2));
        identities.SetAllowed([WebId]);
        await identities.GetAsync(WebId);

        // An expired token in the file now: the CA refuses it, so the agent must be sending what the file holds.
        WriteToken(_api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["weft-ca"], expires: DateTimeOffset.UtcNow.AddMinutes(-1)));
        identities.SetAllowed([WebId, DbId]);
        var e = await Assert.ThrowsAsync<IdentityException>(() => identities.GetAsync(DbId).AsTask());
        Assert.True(e.CertificateUnavailable);
        Assert.Contains("PermissionDenied", e.Message);
        Assert.True(_ca.Metrics.RefusedCount(RefusalReason.TokenRejected) >= 1);

        // Kubelet's next rotation: a fresh token, and the agent's retry gets the certificate.
        WriteToken(_api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["weft-ca"]));
        await CaTestPki.WaitUntilAsync(() => identities.Current.Any(s => s.Id == DbId));
        Assert.Equal(2, _ca.Metrics.IssuedCount);
    }

    [Fact]
    public void AnEmptyTokenFile_StopsTheStart_WithTheFileNamed()
    {
        var tokenFile = WriteToken("");

        var e = Assert.Throws<IdentityException>(() => new CaServiceClient(new CaServiceOptions(new Uri("https://127.0.0.1:1"), null, null) { TokenPath = tokenFile }));

        Assert.Contains(tokenFile, e.Message);
    }

    private string WriteToken(string token)
    {
        // As kubelet does: a new file swapped in, so a reader never sees half a token.
        var path = Path.Combine(_work, "token");
        var next = path + ".new";
        File.WriteAllText(next, token);
        File.Move(next, path, overwrite: true);
        return path;
    }

    private IdentityManager StartAgent(string tokenFile, TimeSpan wait)
    {
        var bundle = Path.Combine(_work, "bundle.crt");
        File.WriteAllText(bundle, _authority.TrustBundle[0].ExportCertificatePem());
        var service = new CaServiceOptions(new Uri($"https://127.0.0.1:{_ca.Endpoint.Port}"), null, null) { TokenPath = tokenFile };
        return IdentityManager.Start(new IdentityOptions(CaTestServer.TrustDomain, null, new CaServiceClient(service))
        {
            TrustBundlePath = bundle,
            IssuanceWait = wait,
        });
    }
}
