using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Weft.Ca;
using Weft.Ca.Protocol;
using Weft.Identity;
using Weft.Inventory;

namespace Weft.Tests.Ca;

/// <summary>A pod line of a test inventory: where a pod of a service account runs.</summary>
internal sealed record TestPod(string Name, string Namespace, string ServiceAccount, string Node, string Ip);

/// <summary>
/// A real CA service on loopback (Kestrel on port 0, TLS, HTTP/2) over a real inventory file, and real gRPC
/// clients that authenticate with node certificates. Disposing stops the server and deletes the files.
/// </summary>
internal sealed class CaTestServer : IAsyncDisposable
{
    public const string TrustDomain = "cluster.local";

    private CaTestServer(string directory, CaFiles files, CertificateAuthority authority, string inventoryPath, InventoryStore store, FileInventorySource source, CaServer server)
    {
        Directory = directory;
        Files = files;
        Authority = authority;
        InventoryPath = inventoryPath;
        Store = store;
        Source = source;
        Server = server;
    }

    public string Directory { get; }

    /// <summary>The CA's files (root/ca.crt, ca.key, bundle.crt).</summary>
    public CaFiles Files { get; }

    public CertificateAuthority Authority { get; }

    public string InventoryPath { get; }

    public InventoryStore Store { get; }

    public FileInventorySource Source { get; }

    public CaServer Server { get; }

    public X509Certificate2 Root => Authority.TrustBundle[0];

    /// <summary>Starts the CA; <paramref name="tune"/> gets the options and the CA's files (to follow them, for a rotation).</summary>
    public static Task<CaTestServer> StartAsync(IEnumerable<TestPod> pods, Func<CaServerOptions, CaServerOptions>? tune = null) =>
        StartAsync(pods, tune is null ? null : (options, _) => tune(options));

    public static async Task<CaTestServer> StartAsync(IEnumerable<TestPod> pods, Func<CaServerOptions, CaFiles, CaServerOptions>? tune)
    {
        var directory = System.IO.Directory.CreateTempSubdirectory("weft-ca-test-").FullName;
        try
        {
            var files = SelfSignedRoot.Write(Path.Combine(directory, "root"), TrustDomain);
            var authority = CertificateAuthority.Load(files);
            var inventoryPath = Path.Combine(directory, "inventory.yaml");
            File.WriteAllText(inventoryPath, InventoryYamlOf(pods));
            var store = new InventoryStore();
            var source = FileInventorySource.Start(inventoryPath, store);
            var options = new CaServerOptions { TrustDomain = TrustDomain, Listen = new IPEndPoint(IPAddress.Loopback, 0) };
            var server = await CaServer.StartAsync(authority, store, tune is null ? options : tune(options, files));
            return new CaTestServer(directory, files, authority, inventoryPath, store, source, server);
        }
        catch
        {
            System.IO.Directory.Delete(directory, recursive: true);
            throw;
        }
    }

    public static string InventoryYamlOf(IEnumerable<TestPod> pods) => string.Join("---\n", pods.Select(p => $"""
        apiVersion: v1
        kind: Pod
        metadata: {"{"}name: {p.Name}, namespace: {p.Namespace}{"}"}
        spec: {"{"}nodeName: {p.Node}, serviceAccountName: {p.ServiceAccount}{"}"}
        status: {"{"}podIP: {p.Ip}, podIPs: [{"{"}ip: {p.Ip}{"}"}]{"}"}

        """));

    /// <summary>Rewrites the inventory and waits until the CA's source has published it.</summary>
    public void ReplacePods(IEnumerable<TestPod> pods)
    {
        File.WriteAllText(InventoryPath, InventoryYamlOf(pods));
        Assert.True(Source.Reload(), "the rewritten inventory did not load");
    }

    /// <summary>A node's client certificate issued by this CA.</summary>
    public X509Certificate2 NodeCertificate(string node) =>
        CaCertificates.IssueNodeCertificate(Authority, new NodeIdentity(TrustDomain, node), TimeSpan.FromHours(1));

    /// <summary>A gRPC client over TLS that checks the CA's serving certificate against the root, presenting <paramref name="clientCertificate"/>.</summary>
    public CaClient Client(X509Certificate2? clientCertificate) => new(Server.Endpoint, Root, clientCertificate);

    public async ValueTask DisposeAsync()
    {
        await Server.DisposeAsync();
        Source.Dispose();
        System.IO.Directory.Delete(Directory, recursive: true);
    }
}

/// <summary>One gRPC channel to the CA, as a node would hold it.</summary>
internal sealed class CaClient : IDisposable
{
    private readonly GrpcChannel _channel;

    public CaClient(IPEndPoint endpoint, X509Certificate2 root, X509Certificate2? clientCertificate, string? bearerToken = null)
    {
        BearerToken = bearerToken;
        _channel = GrpcChannel.ForAddress($"https://localhost:{endpoint.Port}", new GrpcChannelOptions { HttpHandler = CreateHandler(root, clientCertificate), MaxSendMessageSize = null });
        Service = new IstioCertificateService.IstioCertificateServiceClient(_channel);
    }

    public IstioCertificateService.IstioCertificateServiceClient Service { get; }

    /// <summary>Sent as <c>authorization: Bearer</c> with each request when set, as a Kubernetes node agent sends its token.</summary>
    public string? BearerToken { get; set; }

    /// <summary>An HTTP/2 handler over TLS that checks the CA's serving certificate against <paramref name="root"/>.</summary>
    public static SocketsHttpHandler CreateHandler(X509Certificate2 root, X509Certificate2? clientCertificate) =>
        new()
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                TargetHost = "localhost",
                ClientCertificates = clientCertificate is null ? null : [clientCertificate],
                RemoteCertificateValidationCallback = (_, certificate, _, _) => certificate is X509Certificate2 served && CaTestPki.ChainsTo(served, root, server: true),
            },
        };

    /// <summary>Asks for <paramref name="identity"/> with <paramref name="csrPem"/>; the metadata entry is left out when <paramref name="identity"/> is null.</summary>
    public async Task<IstioCertificateResponse> CreateAsync(string? identity, string csrPem, long validitySeconds = 0)
    {
        var request = new IstioCertificateRequest { Csr = csrPem, ValidityDuration = validitySeconds, Metadata = new Struct() };
        if (identity is not null)
        {
            request.Metadata.Fields[CertificateService.ImpersonatedIdentityKey] = Value.ForString(identity);
        }
        var headers = BearerToken is null ? null : new Grpc.Core.Metadata { { "authorization", "Bearer " + BearerToken } };
        return await Service.CreateCertificateAsync(request, headers, deadline: DateTime.UtcNow.AddSeconds(30));
    }

    public void Dispose() => _channel.Dispose();
}

/// <summary>CSRs as a node makes them, and the checks a node makes on what comes back.</summary>
internal static class CaTestPki
{
    public static string Id(string ns, string sa, string trustDomain = CaTestServer.TrustDomain) => $"spiffe://{trustDomain}/ns/{ns}/sa/{sa}";

    /// <summary>A PKCS#10 request signed by <paramref name="key"/> naming the given URIs and DNS names.</summary>
    public static string Csr(ECDsa key, IEnumerable<string> uris, IEnumerable<string>? dnsNames = null, X509Extension? extra = null)
    {
        var request = new CertificateRequest(new X500DistinguishedName("O=test"), key, HashAlgorithmName.SHA256);
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
        if (extra is not null)
        {
            request.CertificateExtensions.Add(extra);
        }
        return request.CreateSigningRequestPem();
    }

    public static string Csr(ECDsa key, string uri) => Csr(key, [uri]);

    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>Polls <paramref name="condition"/> until it holds; fails after <see cref="Patience"/>.</summary>
    public static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not met in time");
            await Task.Delay(20);
        }
    }

    public static bool ChainsTo(X509Certificate2 leaf, X509Certificate2 root, bool server, IEnumerable<X509Certificate2>? intermediates = null)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(root);
        chain.ChainPolicy.ExtraStore.AddRange(intermediates?.ToArray() ?? []);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(new Oid(server ? "1.3.6.1.5.5.7.3.1" : "1.3.6.1.5.5.7.3.2"));
        return chain.Build(leaf);
    }
}
