using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Net.Client;
using Weft.Ca.Protocol;
using Weft.Identity;

namespace Weft.Ca;

/// <summary>Where the agent asks for its workloads' certificates instead of signing them itself.</summary>
/// <param name="Address">The CA service, <c>https://HOST:PORT</c>; HOST must be a name or address in its serving certificate.</param>
/// <param name="NodeCertificatePath">PEM: this node's client certificate (<c>weft ca issue-node</c>), then its intermediates; null in Kubernetes mode.</param>
/// <param name="NodeKeyPath">PEM: the node certificate's private key; null in Kubernetes mode.</param>
internal sealed record CaServiceOptions(Uri Address, string? NodeCertificatePath, string? NodeKeyPath)
{
    /// <summary>Kubernetes mode: the agent pod's projected service-account token, sent as bearer; re-read for every request, since kubelet rotates it.</summary>
    public string? TokenPath { get; init; }

    /// <summary>Largest token file read; a projected token is about 1 KiB.</summary>
    public int MaxTokenBytes { get; init; } = 16 * 1024;

    /// <summary>How long one CreateCertificate call may take before it counts as failed.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>
/// A client of the CA service (Istio's <c>IstioCertificateService/CreateCertificate</c> over TLS): for each
/// identity a fresh ECDSA P-256 key made and kept here, a CSR with exactly its one URI SAN, the identity in the
/// <c>ImpersonatedIdentity</c> metadata, the node certificate as the TLS client certificate. What comes back is
/// checked before use: the leaf must carry that identity, match the key, and chain to the trust bundle.
/// The node authenticates with its node certificate (standalone) or with its pod's projected service-account
/// token as <c>authorization: Bearer</c> (Kubernetes mode, read from the file for every request). The node
/// credential files are re-read when they change, for the next connection to the CA.
/// </summary>
internal sealed class CaServiceClient : ICertificateSource
{
    private readonly CaServiceOptions _options;
    private readonly object _channelGate = new();
    private GrpcChannel? _channel;
    private string? _credentialFingerprint;
    private SpiffeVerifier? _channelVerifier;
    private bool _disposed;

    /// <summary>Reads the node credential now, so a missing or broken one stops the agent at start with a clear message.</summary>
    public CaServiceClient(CaServiceOptions options)
    {
        if (options.Address.Scheme != Uri.UriSchemeHttps)
        {
            throw new IdentityException($"CA address {options.Address}: use https://HOST:PORT (the CA service speaks only TLS)");
        }

        if ((options.NodeCertificatePath is null) != (options.NodeKeyPath is null))
        {
            throw new IdentityException("a node certificate needs its key, and a key its certificate");
        }

        if (options.NodeCertificatePath is null && options.TokenPath is null)
        {
            throw new IdentityException("the CA service needs a node certificate and key, or a service-account token file");
        }

        _options = options;
        CredentialFingerprint();
        if (options.NodeCertificatePath is not null)
        {
            _ = LoadNodeCredential();
        }

        if (options.TokenPath is not null)
        {
            _ = ReadToken();
        }
    }

    public string Description => $"the CA service {_options.Address}";

    /// <summary>Asks the CA for <paramref name="id"/>'s certificate, valid for up to <paramref name="lifetime"/>. Throws <see cref="IdentityException"/> naming the cause.</summary>
    public async Task<Svid> RequestAsync(SpiffeId id, TimeSpan lifetime, SpiffeVerifier verifier, TimeProvider time, CancellationToken cancellationToken)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var csr = new CertificateRequest(new X500DistinguishedName(""), key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddUri(id.ToUri());
        csr.CertificateExtensions.Add(san.Build(critical: false));
        var request = new IstioCertificateRequest
        {
            Csr = csr.CreateSigningRequestPem(),
            ValidityDuration = (long)Math.Ceiling(lifetime.TotalSeconds),
            Metadata = new Struct(),
        };
        request.Metadata.Fields[CertificateService.ImpersonatedIdentityKey] = Value.ForString(id.ToString());

        IstioCertificateResponse response;
        try
        {
            var client = new IstioCertificateService.IstioCertificateServiceClient(Channel(verifier));
            var headers = _options.TokenPath is null ? null : new Metadata { { "authorization", "Bearer " + ReadToken() } };
            response = await client.CreateCertificateAsync(request, headers, deadline: DateTime.UtcNow + _options.RequestTimeout, cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && cancellationToken.IsCancellationRequested)
        {
            throw new OperationCanceledException(cancellationToken);
        }
        catch (RpcException e)
        {
            if (e.StatusCode == StatusCode.Unavailable)
            {
                // The channel's own reconnect backoff would hold later calls back long after the CA returns; the
                // caller's backoff decides when to try again, on a fresh channel.
                DropChannel();
            }

            throw new IdentityException($"the CA at {_options.Address} did not issue {id}: {e.StatusCode}: {e.Status.Detail}", e);
        }

        return Accept(id, key, response, verifier, time);
    }

    public void Dispose()
    {
        lock (_channelGate)
        {
            _disposed = true;
            _channel?.Dispose();
            _channel = null;
        }
    }

    private Svid Accept(SpiffeId id, ECDsa key, IstioCertificateResponse response, SpiffeVerifier verifier, TimeProvider time)
    {
        if (response.CertChain.Count == 0)
        {
            throw new IdentityException($"the CA at {_options.Address} answered for {id} with no certificate");
        }

        var certificates = new X509Certificate2Collection();
        try
        {
            foreach (var pem in response.CertChain)
            {
                certificates.ImportFromPem(pem);
            }
        }
        catch (CryptographicException e)
        {
            throw new IdentityException($"the CA at {_options.Address} answered for {id} with a certificate that is not valid PEM: {e.Message}", e);
        }

        var leaf = certificates[0];
        var intermediates = new X509Certificate2Collection();
        foreach (var certificate in certificates.Skip(1))
        {
            if (!CertificateAuthority.IsSelfSigned(certificate))
            {
                intermediates.Add(certificate);
            }
        }

        // Checked as a peer would check it, both ways round: a certificate the mesh would refuse is no certificate.
        foreach (var role in new[] { TlsPeerRole.Server, TlsPeerRole.Client })
        {
            var verdict = verifier.Verify(leaf, intermediates, role);
            if (!verdict.Verified || !Equals(verdict.Id, id))
            {
                throw new IdentityException($"the CA at {_options.Address} answered for {id} with a certificate the mesh would refuse: {verdict.Reason ?? $"it names {verdict.Id}"}");
            }
        }

        X509Certificate2 withKey;
        try
        {
            withKey = leaf.CopyWithPrivateKey(key);
        }
        catch (CryptographicException e)
        {
            throw new IdentityException($"the CA at {_options.Address} answered for {id} with a certificate for another key: {e.Message}", e);
        }

        return new Svid(id, withKey, intermediates, time.GetUtcNow(), ICertificateSource.Fingerprint)
        {
            RootThumbprint = TrustBundle.RootOf(leaf, intermediates, verifier.TrustBundle),
        };
    }

    /// <summary>The channel to the CA; a new one (for new connections) when the node credential files or the trust bundle changed.</summary>
    private GrpcChannel Channel(SpiffeVerifier verifier)
    {
        lock (_channelGate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var fingerprint = CredentialFingerprint();
            if (_channel is not null && fingerprint == _credentialFingerprint && ReferenceEquals(verifier, _channelVerifier))
            {
                return _channel;
            }

            var handler = new SocketsHttpHandler
            {
                SslOptions = ClientAuthentication(verifier),
                PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5),
                ConnectTimeout = _options.RequestTimeout,
                EnableMultipleHttp2Connections = false,
            };
            var previous = _channel;
            _channel = GrpcChannel.ForAddress(_options.Address, new GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = true });
            _credentialFingerprint = fingerprint;
            _channelVerifier = verifier;
            previous?.Dispose();
            return _channel;
        }
    }

    private void DropChannel()
    {
        lock (_channelGate)
        {
            _channel?.Dispose();
            _channel = null;
        }
    }

    /// <summary>The token as kubelet last wrote it (it rotates the file in place, by an atomic symlink swap).</summary>
    private string ReadToken()
    {
        string token;
        try
        {
            var info = new FileInfo(_options.TokenPath!);
            if (info.Exists && info.Length > _options.MaxTokenBytes)
            {
                throw new IdentityException($"the service-account token {_options.TokenPath} is {info.Length} bytes, over {_options.MaxTokenBytes}: is it the projected token?");
            }

            token = File.ReadAllText(_options.TokenPath!).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IdentityException($"cannot read the service-account token {_options.TokenPath}: {e.Message}", e);
        }

        return token.Length == 0 || token.Length > _options.MaxTokenBytes || token.Any(char.IsWhiteSpace)
            ? throw new IdentityException($"the service-account token {_options.TokenPath} is empty or not one token")
            : token;
    }

    private string CredentialFingerprint()
    {
        if (_options.NodeCertificatePath is null || _options.NodeKeyPath is null)
        {
            return "";
        }

        try
        {
            return Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(_options.NodeCertificatePath).Concat(File.ReadAllBytes(_options.NodeKeyPath)).ToArray()));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IdentityException($"cannot read the node credential ({_options.NodeCertificatePath}, {_options.NodeKeyPath}): {e.Message}", e);
        }
    }

    private (X509Certificate2? Node, X509Certificate2Collection? Intermediates) LoadNodeCredential()
    {
        X509Certificate2 node;
        var chain = new X509Certificate2Collection();
        try
        {
            node = X509Certificate2.CreateFromPemFile(_options.NodeCertificatePath!, _options.NodeKeyPath);
            chain.ImportFromPemFile(_options.NodeCertificatePath!);
        }
        catch (Exception e) when (e is CryptographicException or IOException or ArgumentException)
        {
            throw new IdentityException($"the node credential ({_options.NodeCertificatePath}, {_options.NodeKeyPath}) is unusable: {e.Message}", e);
        }

        var intermediates = new X509Certificate2Collection();
        foreach (var certificate in chain.Skip(1))
        {
            intermediates.Add(certificate);
        }

        return (node, intermediates);
    }

    private SslClientAuthenticationOptions ClientAuthentication(SpiffeVerifier verifier)
    {
        var (node, intermediates) = _options.NodeCertificatePath is null ? (null, null) : LoadNodeCredential();

        // The CA's serving certificate is judged against the mesh's trust bundle and the address's host, never the system store.
        var policy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            RevocationMode = X509RevocationMode.NoCheck,
            DisableCertificateDownloads = true,
        };
        policy.CustomTrustStore.AddRange(verifier.TrustBundle);
        return new SslClientAuthenticationOptions
        {
            TargetHost = _options.Address.IdnHost,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ClientCertificateContext = node is null ? null : SslStreamCertificateContext.Create(node, intermediates, offline: true),
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            CertificateChainPolicy = policy,
            RemoteCertificateValidationCallback = (_, _, _, errors) => errors == SslPolicyErrors.None,
        };
    }
}
