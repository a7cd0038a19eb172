using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using k8s;
using k8s.Models;
using Weft.Ca;
using Weft.Identity;
using Weft.Inventory;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Tests.Ca;

/// <summary>
/// The CA in Kubernetes mode against the wire-level fake API server, through KubernetesClient as in a cluster:
/// callers send their projected service-account token as bearer, the CA checks it with a TokenReview and finds
/// the caller's node from its pod in the pod watch. node1 runs the agent pod weft-agent-node1, web (demo) and
/// db (data); node2 runs weft-agent-node2 and api (demo). Every refusal is PERMISSION_DENIED "permission denied"
/// to the client, counted under its reason, and logged with the cause. The TokenReview cache is off here, so every
/// request shows its own review (TokenReviewCacheTests tests the cache).
/// </summary>
public sealed class KubernetesCaTests : IAsyncLifetime
{
    private const string TrustDomain = CaTestServer.TrustDomain;
    private readonly ConcurrentQueue<string> _log = new();
    private string _directory = null!;
    private FakeApiServer _api = null!;
    private IKubernetes _client = null!;
    private KubernetesPodIndex _pods = null!;
    private CertificateAuthority _authority = null!;
    private CaServer _ca = null!;

    public async Task InitializeAsync()
    {
        _directory = Directory.CreateTempSubdirectory("weft-ca-k8s-test-").FullName;
        _api = FakeApiServer.Start();
        _api.Apply(Pod("weft-system", "weft-agent-node1", "weft-agent", "node1"));
        _api.Apply(Pod("weft-system", "weft-agent-node2", "weft-agent", "node2"));
        _api.Apply(Pod("demo", "web-1", "web", "node1"));
        _api.Apply(Pod("data", "db-1", "db", "node1"));
        _api.Apply(Pod("demo", "api-1", "api", "node2"));
        _api.Apply(Pod("weft-system", "weft-gateway-1", "weft-gateway", "node1"));
        _api.Apply(Pod("edge", "other-gateway-1", "other-gateway", "node1"));
        _client = _api.Client();
        _pods = KubernetesPodIndex.Start(_client, new KubernetesInventoryOptions { NodeName = "", InitialBackoff = TimeSpan.FromMilliseconds(50) });
        await _pods.WaitForListAsync().WaitAsync(CaTestPki.Patience);
        _authority = CertificateAuthority.Load(SelfSignedRoot.Write(Path.Combine(_directory, "root"), TrustDomain));
        _ca = await CaServer.StartAsync(_authority, _client, _pods, new KubernetesCallerOptions { MaxTokenBytes = 8 * 1024, ReviewCacheEntries = 0, GatewayAccounts = ["weft-system/weft-gateway"] },
            new CaServerOptions { TrustDomain = TrustDomain, Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        _ca.Service.Logged += _log.Enqueue;
    }

    public async Task DisposeAsync()
    {
        await _ca.DisposeAsync();
        _pods.Dispose();
        _client.Dispose();
        await _api.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    [Fact]
    public async Task NodeAgentToken_ForAServiceAccountWithAPodOnItsNode_GetsTheCertificate_AfterOneTokenReview_AndTheIssuanceIsLogged()
    {
        using var client = Client(AgentToken("node1"));
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var reviews = _api.TokenReviews;

        var response = await client.CreateAsync(id, CaTestPki.Csr(key, id));

        using var leaf = X509Certificate2.CreateFromPem(response.CertChain[0]);
        Assert.Equal([id], SpiffeVerifier.UriSans(leaf));
        Assert.True(CaTestPki.ChainsTo(leaf, _authority.TrustBundle[0], server: false));
        using var leafKey = leaf.GetECDsaPublicKey()!;
        Assert.Equal(key.ExportSubjectPublicKeyInfo(), leafKey.ExportSubjectPublicKeyInfo());
        Assert.Equal(reviews + 1, _api.TokenReviews);
        Assert.Equal(1, _ca.Metrics.IssuedCount);
        Assert.Contains(_log, line => line.StartsWith($"issued {id} to node node1: serial {leaf.SerialNumber}", StringComparison.Ordinal));
    }

    [Fact]
    public async Task ServiceAccountWithNoPodAnywhere_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "nobody");
        await AssertRefusedAsync(RefusalReason.NoPodOnNode, AgentToken("node1"), id, CaTestPki.Csr(key, id), "no pod of demo/nobody is scheduled on node node1");
    }

    [Fact]
    public async Task ServiceAccountWithPodsOnlyOnAnotherNode_IsRefused_ButThatNodesAgentGetsIt()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "api");
        await AssertRefusedAsync(RefusalReason.NoPodOnNode, AgentToken("node1"), id, CaTestPki.Csr(key, id), "no pod of demo/api is scheduled on node node1");

        using var node2 = Client(AgentToken("node2"));
        var response = await node2.CreateAsync(id, CaTestPki.Csr(key, id));
        using var leaf = X509Certificate2.CreateFromPem(response.CertChain[0]);
        Assert.Equal([id], SpiffeVerifier.UriSans(leaf));
    }

    [Fact]
    public async Task WorkloadPodDeleted_ItsIdentityIsRefusedOnceTheWatchHasSeenIt()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("data", "db");
        var token = AgentToken("node1");
        using (var client = Client(token))
        {
            await client.CreateAsync(id, CaTestPki.Csr(key, id));
        }

        Assert.True(_api.Delete<V1Pod>("data", "db-1"));
        await CaTestPki.WaitUntilAsync(() => !_pods.HasPod("node1", "data", "db"));

        await AssertRefusedAsync(RefusalReason.NoPodOnNode, token, id, CaTestPki.Csr(key, id), "no pod of data/db is scheduled on node node1");
    }

    [Fact]
    public async Task WorkloadPodDeletedWhileThePodWatchWasCut_IsForgottenByTheRelist()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("data", "db");
        var token = AgentToken("node1");
        using (var client = Client(token))
        {
            await client.CreateAsync(id, CaTestPki.Csr(key, id));
        }

        // The delete happens while the CA's watch is cut and its history is compacted away: the watch comes back to
        // 410 Gone and lists again, and only that list can tell the index the pod is gone.
        await _api.StopAsync();
        Assert.True(_api.Delete<V1Pod>("data", "db-1"));
        _api.Compact();
        _api.Resume();
        await CaTestPki.WaitUntilAsync(() => !_pods.HasPod("node1", "data", "db"));

        await AssertRefusedAsync(RefusalReason.NoPodOnNode, token, id, CaTestPki.Csr(key, id), "no pod of data/db is scheduled on node node1");
    }

    [Fact]
    public async Task TokenOfAServiceAccountThatIsNotANodeAccount_IsRefused_EvenForItsOwnIdentity()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var workloadToken = _api.ServiceAccountToken("demo", "web", pod: "web-1", audiences: ["weft-ca"]);
        await AssertRefusedAsync(RefusalReason.NotANodeAccount, workloadToken, id, CaTestPki.Csr(key, id), "the token is system:serviceaccount:demo:web's, not a node account's");
    }

    [Fact]
    public async Task ExpiredToken_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var expired = _api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["weft-ca"], expires: DateTimeOffset.UtcNow.AddMinutes(-1));
        await AssertRefusedAsync(RefusalReason.TokenRejected, expired, id, CaTestPki.Csr(key, id), "service account token has expired");
    }

    [Fact]
    public async Task TokenForAnotherAudience_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var forIstio = _api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["istio-ca"]);
        await AssertRefusedAsync(RefusalReason.TokenRejected, forIstio, id, CaTestPki.Csr(key, id), "token audiences [\"istio-ca\"] is invalid for the target audiences [\"weft-ca\"]");

        var forTheApiServer = _api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1");
        await AssertRefusedAsync(RefusalReason.TokenRejected, forTheApiServer, id, CaTestPki.Csr(key, id), "is invalid for the target audiences [\"weft-ca\"]");
    }

    [Theory]
    [InlineData("garbage")]
    [InlineData("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6d2VmdC1zeXN0ZW06d2VmdC1hZ2VudCJ9.c2lnbmF0dXJl")]
    public async Task GarbageToken_IsRefused(string token)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        await AssertRefusedAsync(RefusalReason.TokenRejected, token, id, CaTestPki.Csr(key, id), "the API server did not authenticate the token: invalid bearer token");
    }

    [Fact]
    public async Task NoToken_IsRefused_WithoutAskingTheApiServer()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var reviews = _api.TokenReviews;
        await AssertRefusedAsync(RefusalReason.NoToken, null, id, CaTestPki.Csr(key, id), "no bearer token");
        Assert.Equal(reviews, _api.TokenReviews);
    }

    [Fact]
    public async Task TokenOverTheSizeLimit_IsRefused_WithoutAskingTheApiServer()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var reviews = _api.TokenReviews;
        await AssertRefusedAsync(RefusalReason.TokenRejected, new string('a', 10 * 1024), id, CaTestPki.Csr(key, id), "bearer token of 10240 bytes exceeds the limit of 8192");
        Assert.Equal(reviews, _api.TokenReviews);
    }

    [Fact]
    public async Task NodeAccountTokenNotBoundToAPod_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var unbound = _api.ServiceAccountToken("weft-system", "weft-agent", pod: null, audiences: ["weft-ca"]);
        await AssertRefusedAsync(RefusalReason.TokenNotBoundToPod, unbound, id, CaTestPki.Csr(key, id), "is not bound to one pod");
    }

    [Fact]
    public async Task CallerWhosePodWasDeleted_IsRefused_ByTheTokenReview()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var token = AgentToken("node1");
        using (var client = Client(token))
        {
            await client.CreateAsync(id, CaTestPki.Csr(key, id));
        }

        Assert.True(_api.Delete<V1Pod>("weft-system", "weft-agent-node1"));

        await AssertRefusedAsync(RefusalReason.TokenRejected, token, id, CaTestPki.Csr(key, id), "pods \"weft-agent-node1\" not found");
    }

    [Fact]
    public async Task CallerWhosePodWasDeleted_IsRefused_FromThePodWatch_WhenTheApiServersTokenCheckLags()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var token = AgentToken("node1");
        using (var client = Client(token))
        {
            await client.CreateAsync(id, CaTestPki.Csr(key, id));
        }

        _api.ChecksBoundPods = false;
        Assert.True(_api.Delete<V1Pod>("weft-system", "weft-agent-node1"));
        await CaTestPki.WaitUntilAsync(() => !_pods.HasPod("node1", "weft-system", "weft-agent"));

        await AssertRefusedAsync(RefusalReason.CallerPodMissing, token, id, CaTestPki.Csr(key, id), "caller weft-system/weft-agent pod weft-system/weft-agent-node1");
    }

    [Fact]
    public async Task CallerWhosePodHasFinished_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var token = AgentToken("node1");
        _api.Apply(Pod("weft-system", "weft-agent-node1", "weft-agent", "node1", phase: "Failed"));
        await CaTestPki.WaitUntilAsync(() => !_pods.HasPod("node1", "weft-system", "weft-agent"));

        await AssertRefusedAsync(RefusalReason.CallerPodNotOnNode, token, id, CaTestPki.Csr(key, id), "is not running on a node (node 'node1', phase Failed)");
    }

    public static TheoryData<string, string, string> BadCsrs => new()
    {
        // case, reason, what the log says
        { "two URIs", RefusalReason.CsrNames, "it has 1 SAN extensions, 2 URIs" },
        { "a DNS name", RefusalReason.CsrNames, "and 1 other names" },
        { "another identity", RefusalReason.CsrIdentityMismatch, "CSR names spiffe://cluster.local/ns/data/sa/db, but the request is for spiffe://cluster.local/ns/demo/sa/web" },
        { "another trust domain", RefusalReason.IdentityForeignTrustDomain, "requested identity spiffe://other.example/ns/demo/sa/web is not in trust domain cluster.local" },
    };

    [Theory]
    [MemberData(nameof(BadCsrs))]
    public async Task NodeAgentWithAValidToken_AskingWithABadCsrOrIdentity_IsRefused(string @case, string reason, string logged)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var (requested, csr) = @case switch
        {
            "two URIs" => (id, CaTestPki.Csr(key, [id, CaTestPki.Id("data", "db")])),
            "a DNS name" => (id, CaTestPki.Csr(key, [id], ["web.demo.svc"])),
            "another identity" => (id, CaTestPki.Csr(key, CaTestPki.Id("data", "db"))),
            _ => (CaTestPki.Id("demo", "web", trustDomain: "other.example"), CaTestPki.Csr(key, CaTestPki.Id("demo", "web", trustDomain: "other.example"))),
        };
        await AssertRefusedAsync(reason, AgentToken("node1"), requested, csr, logged);
    }

    [Fact]
    public async Task TokenReviewFailing_IsUnavailableToTheClient_NotADenial_AndTheNextRequestIsServed()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        using var client = Client(AgentToken("node1"));
        _api.FailNext("tokenreviews", HttpStatusCode.InternalServerError);

        var failure = await Assert.ThrowsAsync<RpcException>(() => client.CreateAsync(id, CaTestPki.Csr(key, id)));

        Assert.Equal(StatusCode.Unavailable, failure.StatusCode);
        Assert.Equal(1, _ca.Metrics.RefusedCount(RefusalReason.TokenReviewFailed));
        Assert.Contains(_log, line => line.Contains("the TokenReview failed: HTTP 500", StringComparison.Ordinal));
        await client.CreateAsync(id, CaTestPki.Csr(key, id));
        Assert.Equal(1, _ca.Metrics.IssuedCount);
    }

    [Fact]
    public async Task GatewayAccountToken_GetsItsOwnIdentity_ForTheNodeItsPodRunsOn()
    {
        using var client = Client(GatewayToken());
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("weft-system", "weft-gateway");

        var response = await client.CreateAsync(id, CaTestPki.Csr(key, id));

        using var leaf = X509Certificate2.CreateFromPem(response.CertChain[0]);
        Assert.Equal([id], SpiffeVerifier.UriSans(leaf));
        Assert.True(CaTestPki.ChainsTo(leaf, _authority.TrustBundle[0], server: false));
        Assert.Contains(_log, line => line.StartsWith($"issued {id} to node node1", StringComparison.Ordinal));
    }

    [Fact]
    public async Task GatewayAccountToken_AskingForAWorkloadOnItsNode_IsRefused_AsNotItsOwn()
    {
        // web (demo) has a pod on node1, the gateway's node: a node account would get it, a gateway never does.
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        await AssertRefusedAsync(RefusalReason.IdentityNotCallersOwn, GatewayToken(), id, CaTestPki.Csr(key, id),
            "the caller is the gateway spiffe://cluster.local/ns/weft-system/sa/weft-gateway and may ask only for its own identity, not spiffe://cluster.local/ns/demo/sa/web");
        var agent = CaTestPki.Id("weft-system", "weft-agent");
        await AssertRefusedAsync(RefusalReason.IdentityNotCallersOwn, GatewayToken(), agent, CaTestPki.Csr(key, agent), "may ask only for its own identity");
    }

    [Fact]
    public async Task GatewayAccountToken_NotBoundToAPod_IsRefused()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("weft-system", "weft-gateway");
        var unbound = _api.ServiceAccountToken("weft-system", "weft-gateway", pod: null, audiences: ["weft-ca"]);
        await AssertRefusedAsync(RefusalReason.TokenNotBoundToPod, unbound, id, CaTestPki.Csr(key, id), "a projected token from the gateway's pod is needed");
    }

    [Fact]
    public async Task GatewayPodDeleted_ItsTokenIsRefused_FromThePodWatch()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("weft-system", "weft-gateway");
        var token = GatewayToken();
        _api.ChecksBoundPods = false;
        Assert.True(_api.Delete<V1Pod>("weft-system", "weft-gateway-1"));
        await CaTestPki.WaitUntilAsync(() => !_pods.HasPod("node1", "weft-system", "weft-gateway"));

        await AssertRefusedAsync(RefusalReason.CallerPodMissing, token, id, CaTestPki.Csr(key, id), "caller weft-system/weft-gateway pod weft-system/weft-gateway-1");
    }

    [Fact]
    public async Task TokenOfAGatewayNotConfiguredAsAGatewayAccount_IsRefused_EvenForItsOwnIdentity()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("edge", "other-gateway");
        var token = _api.ServiceAccountToken("edge", "other-gateway", pod: "other-gateway-1", audiences: ["weft-ca"]);
        await AssertRefusedAsync(RefusalReason.NotANodeAccount, token, id, CaTestPki.Csr(key, id),
            "the token is system:serviceaccount:edge:other-gateway's, not a node account's (weft-system/weft-agent) nor a gateway account's (weft-system/weft-gateway)");
    }

    [Fact]
    public void AnAccountConfiguredBothAsNodeAndGateway_IsRejected()
    {
        var error = Assert.Throws<ArgumentException>(() => new ServiceAccountTokenAuthenticator(_client, _pods, TrustDomain,
            new KubernetesCallerOptions { GatewayAccounts = ["weft-system/weft-agent"] }, new CaMetrics()));
        Assert.Contains("cannot be both a node account and a gateway account", error.Message);
    }

    private string GatewayToken() => _api.ServiceAccountToken("weft-system", "weft-gateway", pod: "weft-gateway-1", audiences: ["weft-ca"]);

    private string AgentToken(string node) => _api.ServiceAccountToken("weft-system", "weft-agent", pod: $"weft-agent-{node}", audiences: ["weft-ca"]);

    private CaClient Client(string? token) => new(_ca.Endpoint, _authority.TrustBundle[0], null, token);

    private async Task AssertRefusedAsync(string reason, string? token, string identity, string csr, string logged)
    {
        using var client = Client(token);
        var before = _ca.Metrics.RefusedCount(reason);
        var issuedBefore = _ca.Metrics.IssuedCount;

        var failure = await Assert.ThrowsAsync<RpcException>(() => client.CreateAsync(identity, csr));

        Assert.Equal(StatusCode.PermissionDenied, failure.StatusCode);
        Assert.Equal("permission denied", failure.Status.Detail);
        Assert.Equal(before + 1, _ca.Metrics.RefusedCount(reason));
        Assert.Equal(issuedBefore, _ca.Metrics.IssuedCount);
        Assert.Contains($"weft_ca_refused_total{{reason=\"{reason}\"}}", await _ca.Metrics.ExportAsync());
        Assert.True(_log.Any(line => line.StartsWith($"refused ({reason}): ", StringComparison.Ordinal) && line.Contains(logged, StringComparison.Ordinal)),
            $"no log line 'refused ({reason}): ...{logged}...' in:\n{string.Join("\n", _log)}");
    }

    private static V1Pod Pod(string ns, string name, string serviceAccount, string node, string phase = "Running") => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns },
        Spec = new V1PodSpec { NodeName = node, ServiceAccountName = serviceAccount, Containers = [new V1Container { Name = "app", Image = "example/app:1" }] },
        Status = new V1PodStatus { Phase = phase },
    };
}
