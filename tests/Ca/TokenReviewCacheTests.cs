using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json.Nodes;
using Grpc.Core;
using k8s;
using k8s.Models;
using Weft.Ca;
using Weft.Identity;
using Weft.Inventory;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Tests.Ca;

/// <summary>
/// The CA in Kubernetes mode (loopback, the wire-level fake API server) with its TokenReview cache at two entries:
/// a node's token is reviewed once and then served from the cache, while its pod is checked on every request;
/// refusals are never cached; past the limit an answer is evicted and counted. Also the ConfigMap the CA
/// publishes its trust bundle in, and how it follows a rotation.
/// </summary>
public sealed class TokenReviewCacheTests : IAsyncLifetime
{
    private string _directory = null!;
    private FakeApiServer _api = null!;
    private IKubernetes _client = null!;
    private KubernetesPodIndex _pods = null!;
    private CaFiles _files = null!;
    private CertificateAuthority _authority = null!;
    private CaServer _ca = null!;

    public async Task InitializeAsync()
    {
        _directory = Directory.CreateTempSubdirectory("weft-ca-cache-test-").FullName;
        _api = FakeApiServer.Start();
        _api.Apply(Pod("weft-system", "weft-agent-node1", "weft-agent", "node1"));
        _api.Apply(Pod("weft-system", "weft-agent-node2", "weft-agent", "node2"));
        _api.Apply(Pod("demo", "web-1", "web", "node1"));
        _api.Apply(Pod("demo", "api-1", "api", "node2"));
        _client = _api.Client();
        _pods = KubernetesPodIndex.Start(_client, new KubernetesInventoryOptions { NodeName = "", InitialBackoff = TimeSpan.FromMilliseconds(50) });
        await _pods.WaitForListAsync().WaitAsync(CaTestPki.Patience);
        _files = SelfSignedRoot.Write(Path.Combine(_directory, "root"), CaTestServer.TrustDomain);
        _authority = CertificateAuthority.Load(_files);
        _ca = await CaServer.StartAsync(_authority, _client, _pods, new KubernetesCallerOptions { ReviewCacheEntries = 2 },
            new CaServerOptions
            {
                TrustDomain = CaTestServer.TrustDomain,
                Listen = new IPEndPoint(IPAddress.Loopback, 0),
                Files = _files,
                ReloadInterval = TimeSpan.FromMilliseconds(100),
                Publisher = new ConfigMapTrustBundlePublisher(_client, "weft-system", "weft-ca-root-cert"),
            });
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
    public async Task RepeatedRequestsWithOneNodeToken_MakeOneTokenReview_AndCountCacheHits()
    {
        var token = AgentToken("node1");
        var reviews = _api.TokenReviews;

        for (var i = 0; i < 3; i++)
        {
            await IssueAsync(token, "demo", "web");
        }

        Assert.Equal(reviews + 1, _api.TokenReviews);
        Assert.Equal(2, _ca.Metrics.ReviewCacheHits);
        Assert.Equal(3, _ca.Metrics.IssuedCount);
        var exposition = await _ca.Metrics.ExportAsync();
        Assert.Contains("weft_ca_token_review_cache_total{result=\"hit\"} 2", exposition);
        Assert.Contains("weft_ca_token_review_cache_entries 1", exposition);
    }

    [Fact]
    public async Task CachedTokenWhosePodWasDeleted_IsStillRefused_TheCallersPodIsCheckedOnEveryRequest()
    {
        var token = AgentToken("node1");
        await IssueAsync(token, "demo", "web");
        var reviews = _api.TokenReviews;
        var uid = _api.Get<V1Pod>("weft-system", "weft-agent-node1")!["metadata"]!["uid"]!.GetValue<string>();

        Assert.True(_api.Delete<V1Pod>("weft-system", "weft-agent-node1"));
        await CaTestPki.WaitUntilAsync(() => _pods.Pod(uid) is null);

        var refused = await Assert.ThrowsAsync<RpcException>(() => IssueAsync(token, "demo", "web"));
        Assert.Equal(StatusCode.PermissionDenied, refused.StatusCode);
        Assert.Equal(1, _ca.Metrics.RefusedCount(RefusalReason.CallerPodMissing));
        Assert.Equal(reviews, _api.TokenReviews);
        Assert.Equal(1, _ca.Metrics.ReviewCacheHits);
    }

    [Fact]
    public async Task RefusedTokens_AreNotCached_EachRequestIsReviewedAgain()
    {
        var wrongAudience = _api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["istio-ca"]);
        var workload = _api.ServiceAccountToken("demo", "web", pod: "web-1", audiences: ["weft-ca"]);
        var reviews = _api.TokenReviews;

        for (var i = 0; i < 2; i++)
        {
            Assert.Equal(StatusCode.PermissionDenied, (await Assert.ThrowsAsync<RpcException>(() => IssueAsync(wrongAudience, "demo", "web"))).StatusCode);
            Assert.Equal(StatusCode.PermissionDenied, (await Assert.ThrowsAsync<RpcException>(() => IssueAsync(workload, "demo", "web"))).StatusCode);
        }

        Assert.Equal(reviews + 4, _api.TokenReviews);
        Assert.Equal(0, _ca.Metrics.ReviewCacheHits);
        Assert.Equal(0, _ca.Metrics.ReviewCacheEntryCount);
        await IssueAsync(AgentToken("node1"), "demo", "web");
    }

    [Fact]
    public async Task PastTheEntryLimit_AnAnswerIsEvicted_Counted_AndItsTokenIsReviewedAgain()
    {
        var (first, second, third) = (AgentToken("node1"), AgentToken("node2"), AgentToken("node1"));
        await IssueAsync(first, "demo", "web");
        await IssueAsync(second, "demo", "api");
        await IssueAsync(third, "demo", "web");

        Assert.Equal(1, _ca.Metrics.ReviewCacheEvictions);
        Assert.Equal(2, _ca.Metrics.ReviewCacheEntryCount);
        Assert.Contains("weft_ca_token_review_cache_evictions_total 1", await _ca.Metrics.ExportAsync());

        // The first answer (the soonest to expire) made room; its token costs a review again, the third does not.
        var reviews = _api.TokenReviews;
        await IssueAsync(third, "demo", "web");
        Assert.Equal(reviews, _api.TokenReviews);
        await IssueAsync(first, "demo", "web");
        Assert.Equal(reviews + 1, _api.TokenReviews);
        Assert.Equal(2, _ca.Metrics.ReviewCacheEntryCount);
    }

    [Fact]
    public async Task CachedAnswer_IsNotUsedPastTheTokensOwnExpiry()
    {
        var token = _api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["weft-ca"], expires: DateTimeOffset.UtcNow.AddSeconds(3));
        await IssueAsync(token, "demo", "web");
        await Task.Delay(TimeSpan.FromSeconds(4));
        var reviews = _api.TokenReviews;

        var refused = await Assert.ThrowsAsync<RpcException>(() => IssueAsync(token, "demo", "web"));

        Assert.Equal(StatusCode.PermissionDenied, refused.StatusCode);
        Assert.Equal(reviews + 1, _api.TokenReviews);
        Assert.Equal(1, _ca.Metrics.RefusedCount(RefusalReason.TokenRejected));
    }

    [Fact]
    public void TokenExpiry_IsReadFromTheJwtClaims_AndATokenWithoutOneHasNone()
    {
        var expires = DateTimeOffset.UtcNow.AddMinutes(7);
        var token = _api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["weft-ca"], expires: expires);

        Assert.Equal(expires.ToUnixTimeSeconds(), TokenReviewCache.ExpiryOf(token)!.Value.ToUnixTimeSeconds());
        Assert.Null(TokenReviewCache.ExpiryOf("not-a-jwt"));
        Assert.Null(TokenReviewCache.ExpiryOf("a.!!!.c"));
        Assert.Null(TokenReviewCache.ExpiryOf("e30.e30.e30"));
    }

    [Fact]
    public async Task TrustBundle_IsPublishedInAConfigMap_AndFollowsTheCaFilesThroughARotation()
    {
        using var oldRoot = X509Certificate2.CreateFromPem(File.ReadAllText(_files.CertificatePath));
        await CaTestPki.WaitUntilAsync(() => Published() is ([var root], var signing) && root == oldRoot.Thumbprint && signing == oldRoot.Thumbprint);
        var configMap = await _client.CoreV1.ReadNamespacedConfigMapAsync("weft-ca-root-cert", "weft-system");
        Assert.Equal([PublishedTrustBundle.RootsKey, PublishedTrustBundle.SigningRootKey], configMap.Data.Keys.Order(StringComparer.Ordinal));

        var next = SelfSignedRoot.Write(Path.Combine(_directory, "new-root"), CaTestServer.TrustDomain);
        using var newRoot = X509Certificate2.CreateFromPem(File.ReadAllText(next.CertificatePath));
        Replace(_files.TrustBundlePath, oldRoot.ExportCertificatePem() + "\n" + newRoot.ExportCertificatePem() + "\n");
        await CaTestPki.WaitUntilAsync(() => Published() is ([_, _], var signing) && signing == oldRoot.Thumbprint);

        Replace(_files.KeyPath, File.ReadAllText(next.KeyPath), _files.CertificatePath, File.ReadAllText(next.CertificatePath));
        await CaTestPki.WaitUntilAsync(() => Published() is ([_, _], var signing) && signing == newRoot.Thumbprint);
        Assert.Equal(3, _api.Writes("configmaps"));

        // The publication is counted when the API server's answer is back, a moment after the write is visible.
        await CaTestPki.WaitUntilAsync(() => _ca.Metrics.Publications(ok: true) >= 3);
        Assert.Equal(3, _ca.Metrics.Publications(ok: true));
        Assert.Equal(3, _api.Writes("configmaps"));
    }

    private (List<string> Roots, string? Signing) Published()
    {
        if (_api.Get<V1ConfigMap>("weft-system", "weft-ca-root-cert")?["data"] is not JsonObject data
            || data[PublishedTrustBundle.RootsKey]?.GetValue<string>() is not { } roots || data[PublishedTrustBundle.SigningRootKey]?.GetValue<string>() is not { } signing)
        {
            return ([], null);
        }

        var collection = new X509Certificate2Collection();
        collection.ImportFromPem(roots);
        using var signer = X509Certificate2.CreateFromPem(signing);
        return (collection.Select(c => c.Thumbprint).ToList(), signer.Thumbprint);
    }

    private static void Replace(string path, string contents, string? secondPath = null, string? secondContents = null)
    {
        File.WriteAllText(path + ".new", contents);
        if (secondPath is not null)
        {
            File.WriteAllText(secondPath + ".new", secondContents);
        }

        File.Move(path + ".new", path, overwrite: true);
        if (secondPath is not null)
        {
            File.Move(secondPath + ".new", secondPath, overwrite: true);
        }
    }

    private async Task IssueAsync(string token, string ns, string serviceAccount)
    {
        using var client = new CaClient(_ca.Endpoint, _authority.TrustBundle[0], null, token);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id(ns, serviceAccount);
        await client.CreateAsync(id, CaTestPki.Csr(key, id));
    }

    private string AgentToken(string node) => _api.ServiceAccountToken("weft-system", "weft-agent", pod: $"weft-agent-{node}", audiences: ["weft-ca"]);

    private static V1Pod Pod(string ns, string name, string serviceAccount, string node) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns },
        Spec = new V1PodSpec { NodeName = node, ServiceAccountName = serviceAccount, Containers = [new V1Container { Name = "app", Image = "example/app:1" }] },
        Status = new V1PodStatus { Phase = "Running" },
    };
}
