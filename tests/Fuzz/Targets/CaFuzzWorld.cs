using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Google.Protobuf.WellKnownTypes;
using k8s;
using Weft.Ca;
using Weft.Ca.Protocol;
using Weft.Identity;
using Weft.Inventory;

namespace Weft.Fuzz;

/// <summary>
/// The CA the two CA harnesses ask, built once in memory: a fresh root, a node certificate for node1, the
/// standalone placements (demo/client on node1, demo/server on node2) and, for Kubernetes mode, a pod index
/// fed by an in-memory API server (a node agent's pod on node1, one finished, one not scheduled) whose
/// TokenReview answer is whatever the harness sets. Nothing leaves the process.
/// </summary>
internal static class CaFuzzWorld
{
    public const string TrustDomain = "cluster.local";

    public const string AgentPodUid = "6f1f3c9e-8a51-4d7e-9a3e-2b7c1d0e4f55";

    private static readonly CertificateAuthority Authority = CreateAuthority();

    private static readonly CaServerOptions Options = new() { TrustDomain = TrustDomain, Listen = new IPEndPoint(IPAddress.Loopback, 0) };

    public static readonly X509Certificate2 NodeCertificate =
        CaCertificates.IssueNodeCertificate(Authority, new NodeIdentity(TrustDomain, "node1"), TimeSpan.FromDays(1));

    /// <summary>Answers the CA's TokenReview with <see cref="ApiServer.TokenReviewAnswer"/>.</summary>
    public static readonly ApiServer Api = new();

    /// <summary>The standalone CA: callers authenticated by node certificates.</summary>
    public static readonly CertificateService Standalone = Service(new NodeCertificateAuthenticator(TrustDomain, () => Authority), StandalonePlacements());

    /// <summary>The Kubernetes CA: callers authenticated by service-account tokens and the pod index.</summary>
    public static CertificateService Kubernetes => KubernetesWorld.Value;

    private static readonly Lazy<CertificateService> KubernetesWorld = new(KubernetesService);

    /// <summary>A well-formed request for demo/client, which has a pod on node1.</summary>
    public static IstioCertificateRequest Request(string identity, string csrPem, long validity = 0)
    {
        var request = new IstioCertificateRequest { Csr = csrPem, ValidityDuration = validity, Metadata = new Struct() };
        request.Metadata.Fields[CertificateService.ImpersonatedIdentityKey] = Value.ForString(identity);
        return request;
    }

    /// <summary>A PKCS#10 request signed by a fresh key, naming the given URIs (and DNS names), as a node makes it.</summary>
    public static string Csr(AsymmetricAlgorithm key, IEnumerable<string> uris, IEnumerable<string>? dnsNames = null)
    {
        var request = key switch
        {
            ECDsa ec => new CertificateRequest(new X500DistinguishedName("O=fuzz"), ec, HashAlgorithmName.SHA256),
            RSA rsa => new CertificateRequest(new X500DistinguishedName("O=fuzz"), rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1),
            _ => throw new ArgumentException("ECDSA or RSA", nameof(key)),
        };
        var san = new SubjectAlternativeNameBuilder();
        foreach (var uri in uris)
        {
            san.AddUri(new Uri(uri));
        }

        foreach (var dns in dnsNames ?? [])
        {
            san.AddDnsName(dns);
        }

        request.CertificateExtensions.Add(san.Build());
        return request.CreateSigningRequestPem();
    }

    private static CertificateAuthority CreateAuthority()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"O=Weft, CN=fuzz root for {TrustDomain}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var now = DateTimeOffset.UtcNow;
        using var root = request.CreateSelfSigned(now.AddMinutes(-5), now.AddDays(30));
        var pem = root.ExportCertificatePem();
        return CertificateAuthority.FromPem(pem, key.ExportPkcs8PrivateKeyPem(), pem);
    }

    private static CertificateService Service(ICaCallerAuthenticator callers, IPodPlacements placements) =>
        new(new CaService(Authority, Options, new CertificateRequestAuthorizer(TrustDomain, callers, placements, Options.MaxCsrBytes), new CaMetrics()));

    private static PodPlacementTracker StandalonePlacements()
    {
        var store = new InventoryStore();
        store.Publish(InventoryBuilder.Build(InventoryYaml.Load("""
            apiVersion: v1
            kind: Pod
            metadata: {name: a1, namespace: demo}
            spec: {nodeName: node1, serviceAccountName: client}
            status: {podIP: 10.244.1.2}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: b1, namespace: demo}
            spec: {nodeName: node2, serviceAccountName: server}
            status: {podIP: 10.244.2.2}
            """, "ca-fuzz-world.yaml")));
        return new PodPlacementTracker(store);
    }

    private static CertificateService KubernetesService()
    {
        var client = new k8s.Kubernetes(new KubernetesClientConfiguration { Host = "http://fuzz.invalid" }, Api);
        var pods = KubernetesPodIndex.Start(client, new KubernetesInventoryOptions { NodeName = "" });
        if (!pods.WaitForListAsync().Wait(TimeSpan.FromSeconds(60)))
        {
            throw new TimeoutException("the in-memory pod list was not read");
        }

        var callers = new ServiceAccountTokenAuthenticator(client, pods, TrustDomain, new KubernetesCallerOptions { ReviewCacheEntries = 0 }, new CaMetrics());
        return Service(callers, pods);
    }

    /// <summary>
    /// The API server the Kubernetes CA talks to: lists three pods, holds every watch open without events (so
    /// nothing runs in the background between executions), and answers a TokenReview with the harness's bytes.
    /// </summary>
    internal sealed class ApiServer : DelegatingHandler
    {
        private static readonly byte[] PodList = Encoding.UTF8.GetBytes($$$"""
            {"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"10"},"items":[
            {"metadata":{"name":"weft-agent-abcde","namespace":"weft-system","uid":"{{{AgentPodUid}}}","resourceVersion":"3"},"spec":{"nodeName":"node1","serviceAccountName":"weft-agent"},"status":{"phase":"Running"}},
            {"metadata":{"name":"weft-agent-done","namespace":"weft-system","uid":"u-finished","resourceVersion":"4"},"spec":{"nodeName":"node2","serviceAccountName":"weft-agent"},"status":{"phase":"Succeeded"}},
            {"metadata":{"name":"weft-agent-pending","namespace":"weft-system","uid":"u-pending","resourceVersion":"5"},"spec":{"serviceAccountName":"weft-agent"},"status":{"phase":"Pending"}},
            {"metadata":{"name":"a1","namespace":"demo","uid":"u-a1","resourceVersion":"6"},"spec":{"nodeName":"node1","serviceAccountName":"client"},"status":{"phase":"Running"}}
            ]}
            """);

        public byte[] TokenReviewAnswer { get; set; } = [];

        public HttpStatusCode TokenReviewStatus { get; set; } = HttpStatusCode.Created;

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var path = request.RequestUri?.AbsolutePath ?? "";
            HttpContent content = path.EndsWith("/tokenreviews", StringComparison.Ordinal) ? new ByteArrayContent(TokenReviewAnswer)
                : request.RequestUri?.Query.Contains("watch=true", StringComparison.Ordinal) == true ? new StreamContent(new SilentStream())
                : new ByteArrayContent(PodList);
            var status = path.EndsWith("/tokenreviews", StringComparison.Ordinal) ? TokenReviewStatus : HttpStatusCode.OK;
            return Task.FromResult(new HttpResponseMessage(status) { Content = content, RequestMessage = request });
        }
    }

    /// <summary>A watch body that never sends an event: reads wait until the watch gives up.</summary>
    private sealed class SilentStream : Stream
    {
        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count)
        {
            Thread.Sleep(Timeout.Infinite);
            return 0;
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            await Task.Delay(Timeout.Infinite, cancellationToken).ConfigureAwait(false);
            return 0;
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
