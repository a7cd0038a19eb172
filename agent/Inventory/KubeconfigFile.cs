using System.Text.Json;
using System.Text.Json.Serialization;
using k8s;
using k8s.Exceptions;
using k8s.KubeConfigModels;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;

namespace Weft.Inventory;

/// <summary>
/// Reads kubeconfig files without KubernetesYaml (whose static constructor cannot run under NativeAOT) and hands
/// KubernetesClient the model it would have read, so contexts, tokens, client certificates, exec plugins and relative
/// paths work as <see cref="KubernetesClientConfiguration.BuildConfigFromConfigFile(string, string, string, bool)"/>
/// has them. The YAML goes through <see cref="TypedYamlJson"/> into <see cref="KubeconfigDocument"/>, the file's
/// fields under their kubeconfig names with source-generated JSON metadata (KubernetesClient's own model cannot have
/// any: its <c>extensions</c> are <c>dynamic</c>), and from there into KubernetesClient's <see cref="K8SConfiguration"/>.
/// Extensions and preferences are left out: building a client configuration does not read them.
/// </summary>
internal static class KubeconfigFile
{
    private static readonly JsonSerializerOptions Options = new() { TypeInfoResolver = KubeconfigJson.Default };

    /// <summary>
    /// The file's configuration, its relative paths taken from the file's directory. Throws <see cref="KubeConfigException"/>
    /// naming the file (and the line and column, for YAML that cannot be read), or what reading the file throws.
    /// </summary>
    public static K8SConfiguration Load(string path)
    {
        var full = Path.GetFullPath(path);
        var content = File.ReadAllText(full);
        K8SConfiguration configuration;
        try
        {
            configuration = Read(content) ?? new K8SConfiguration();
        }
        catch (YamlValueException ex)
        {
            throw new KubeConfigException($"{full}:{ex.Start.Line}:{ex.Start.Column}: {ex.Message}", ex);
        }
        catch (YamlException ex)
        {
            throw new KubeConfigException($"{full}:{ex.Start.Line}:{ex.Start.Column}: {ex.Message}", ex);
        }
        catch (Exception ex) when (ex is JsonException or FormatException or InvalidOperationException or NotSupportedException or ArgumentException)
        {
            throw new KubeConfigException($"{full}: {TypedYamlJson.Describe(ex)}", ex);
        }

        configuration.FileName = full;
        return configuration;
    }

    /// <summary>
    /// A client configuration from this kubeconfig file, as <see cref="KubernetesClientConfiguration.BuildConfigFromConfigFile(string, string, string, bool)"/>
    /// builds it: <paramref name="context"/>, or the file's current context.
    /// </summary>
    public static KubernetesClientConfiguration BuildConfig(string path, string? context = null) =>
        KubernetesClientConfiguration.BuildConfigFromConfigObject(Load(path), context);

    /// <summary>
    /// As <see cref="KubernetesClientConfiguration.BuildDefaultConfig"/>: the files of $KUBECONFIG (merged, the first to name a
    /// cluster, user or context wins), else ~/.kube/config, else the in-cluster service account, else http://localhost:8080.
    /// </summary>
    public static KubernetesClientConfiguration BuildDefaultConfig()
    {
        if (Environment.GetEnvironmentVariable("KUBECONFIG") is { } variable)
        {
            var files = variable.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries).Select(f => f.Trim('"')).ToList();
            var loaded = files.Where(File.Exists).Select(Load).ToList();
            if (loaded.Count == 0)
            {
                throw new KubeConfigException($"none of the files $KUBECONFIG names exists: {variable}");
            }

            return KubernetesClientConfiguration.BuildConfigFromConfigObject(Merge(loaded));
        }

        if (File.Exists(KubernetesClientConfiguration.KubeConfigDefaultLocation))
        {
            return BuildConfig(KubernetesClientConfiguration.KubeConfigDefaultLocation);
        }

        return KubernetesClientConfiguration.IsInCluster() ? KubernetesClientConfiguration.InClusterConfig()
            : new KubernetesClientConfiguration { Host = "http://localhost:8080" };
    }

    /// <summary>Kubeconfig files merged as kubectl merges them: the first file to set a value or name an entry wins.</summary>
    private static K8SConfiguration Merge(List<K8SConfiguration> files)
    {
        var merged = files[0];
        foreach (var file in files.Skip(1))
        {
            merged.CurrentContext ??= file.CurrentContext;
            merged.Clusters = [.. merged.Clusters ?? [], .. (file.Clusters ?? []).Where(c => merged.Clusters?.Any(m => m.Name == c.Name) != true)];
            merged.Users = [.. merged.Users ?? [], .. (file.Users ?? []).Where(u => merged.Users?.Any(m => m.Name == u.Name) != true)];
            merged.Contexts = [.. merged.Contexts ?? [], .. (file.Contexts ?? []).Where(c => merged.Contexts?.Any(m => m.Name == c.Name) != true)];
        }

        return merged;
    }

    private static K8SConfiguration? Read(string content)
    {
        var parser = new Parser(new StringReader(content));
        parser.Consume<StreamStart>();
        if (!parser.TryConsume<DocumentStart>(out _))
        {
            return null; // an empty file
        }

        if (parser.TryConsume<Scalar>(out var scalar))
        {
            return scalar.Value.Length == 0 ? null
                : throw new YamlValueException(scalar.Start, $"expected a kubeconfig (a mapping with clusters, users and contexts), found the value '{scalar.Value}'");
        }

        var events = new List<ParsingEvent>();
        var level = 0;
        do
        {
            var current = parser.Current ?? throw new YamlValueException(Mark.Empty, "the kubeconfig ended inside a mapping or list");
            level += current.NestingIncrease;
            events.Add(current);
            parser.MoveNext();
        }
        while (level > 0);

        var document = (KubeconfigDocument?)new TypedYamlJson(Options).Read(events, typeof(KubeconfigDocument));
        return document?.ToModel();
    }
}

/// <summary>A kubeconfig file's fields that a client configuration uses, under their names in the file.</summary>
internal sealed class KubeconfigDocument
{
    [JsonPropertyName("apiVersion")]
    public string? ApiVersion { get; set; }

    [JsonPropertyName("kind")]
    public string? Kind { get; set; }

    [JsonPropertyName("current-context")]
    public string? CurrentContext { get; set; }

    [JsonPropertyName("clusters")]
    public List<NamedCluster?>? Clusters { get; set; }

    [JsonPropertyName("users")]
    public List<NamedUser?>? Users { get; set; }

    [JsonPropertyName("contexts")]
    public List<NamedContext?>? Contexts { get; set; }

    public K8SConfiguration ToModel() => new()
    {
        ApiVersion = ApiVersion,
        Kind = Kind,
        CurrentContext = CurrentContext,
        Clusters = [.. (Clusters ?? []).OfType<NamedCluster>().Select(c => new Cluster
        {
            Name = c.Name,
            ClusterEndpoint = c.Cluster is not { } e ? null : new ClusterEndpoint
            {
                Server = e.Server,
                CertificateAuthority = e.CertificateAuthority,
                CertificateAuthorityData = e.CertificateAuthorityData,
                TlsServerName = e.TlsServerName,
                SkipTlsVerify = e.InsecureSkipTlsVerify ?? false,
            },
        })],
        Users = [.. (Users ?? []).OfType<NamedUser>().Select(u => new User
        {
            Name = u.Name,
            UserCredentials = u.User is not { } c ? null : new UserCredentials
            {
                ClientCertificateData = c.ClientCertificateData,
                ClientCertificate = c.ClientCertificate,
                ClientKeyData = c.ClientKeyData,
                ClientKey = c.ClientKey,
                Token = c.Token,
                Impersonate = c.As,
                ImpersonateGroups = c.AsGroups ?? [],
                ImpersonateUserExtra = c.AsUserExtra ?? [],
                UserName = c.Username,
                Password = c.Password,
                AuthProvider = c.AuthProvider is not { } p ? null : new AuthProvider { Name = p.Name, Config = p.Config },
                ExternalExecution = c.Exec is not { } x ? null : new ExternalExecution
                {
                    ApiVersion = x.ApiVersion,
                    Command = x.Command,
                    Arguments = x.Args,
                    EnvironmentVariables = x.Env,
                    InstallHint = x.InstallHint,
                    ProvideClusterInfo = x.ProvideClusterInfo ?? false,
                },
            },
        })],
        Contexts = [.. (Contexts ?? []).OfType<NamedContext>().Select(c => new Context
        {
            Name = c.Name,
            ContextDetails = c.Context is not { } d ? null : new ContextDetails { Cluster = d.Cluster, User = d.User, Namespace = d.Namespace },
        })],
    };

    internal sealed class NamedCluster
    {
        [JsonPropertyName("name")]
        public string? Name { get; set; }

        [JsonPropertyName("cluster")]
        public ClusterFields? Cluster { get; set; }
    }

    internal sealed class ClusterFields
    {
        [JsonPropertyName("server")]
        public string? Server { get; set; }

        [JsonPropertyName("certificate-authority")]
        public string? CertificateAuthority { get; set; }

        [JsonPropertyName("certificate-authority-data")]
        public string? CertificateAuthorityData { get; set; }

        [JsonPropertyName("tls-server-name")]
        public string? TlsServerName { get; set; }

        [JsonPropertyName("insecure-skip-tls-verify")]
        public bool? InsecureSkipTlsVerify { get; set; }
    }

    internal sealed class NamedUser
    {
        [JsonPropertyName("name")]
        public string? Name { get; set; }

        [JsonPropertyName("user")]
        public UserFields? User { get; set; }
    }

    internal sealed class UserFields
    {
        [JsonPropertyName("client-certificate-data")]
        public string? ClientCertificateData { get; set; }

        [JsonPropertyName("client-certificate")]
        public string? ClientCertificate { get; set; }

        [JsonPropertyName("client-key-data")]
        public string? ClientKeyData { get; set; }

        [JsonPropertyName("client-key")]
        public string? ClientKey { get; set; }

        [JsonPropertyName("token")]
        public string? Token { get; set; }

        [JsonPropertyName("as")]
        public string? As { get; set; }

        [JsonPropertyName("as-groups")]
        public List<string>? AsGroups { get; set; }

        [JsonPropertyName("as-user-extra")]
        public Dictionary<string, string>? AsUserExtra { get; set; }

        [JsonPropertyName("username")]
        public string? Username { get; set; }

        [JsonPropertyName("password")]
        public string? Password { get; set; }

        [JsonPropertyName("auth-provider")]
        public AuthProviderFields? AuthProvider { get; set; }

        [JsonPropertyName("exec")]
        public ExecFields? Exec { get; set; }
    }

    internal sealed class AuthProviderFields
    {
        [JsonPropertyName("name")]
        public string? Name { get; set; }

        [JsonPropertyName("config")]
        public Dictionary<string, string>? Config { get; set; }
    }

    internal sealed class ExecFields
    {
        [JsonPropertyName("apiVersion")]
        public string? ApiVersion { get; set; }

        [JsonPropertyName("command")]
        public string? Command { get; set; }

        [JsonPropertyName("args")]
        public List<string>? Args { get; set; }

        [JsonPropertyName("env")]
        public List<Dictionary<string, string>>? Env { get; set; }

        [JsonPropertyName("installHint")]
        public string? InstallHint { get; set; }

        [JsonPropertyName("provideClusterInfo")]
        public bool? ProvideClusterInfo { get; set; }
    }

    internal sealed class NamedContext
    {
        [JsonPropertyName("name")]
        public string? Name { get; set; }

        [JsonPropertyName("context")]
        public ContextFields? Context { get; set; }
    }

    internal sealed class ContextFields
    {
        [JsonPropertyName("cluster")]
        public string? Cluster { get; set; }

        [JsonPropertyName("user")]
        public string? User { get; set; }

        [JsonPropertyName("namespace")]
        public string? Namespace { get; set; }
    }
}

/// <summary>Source-generated JSON metadata for <see cref="KubeconfigDocument"/>.</summary>
[JsonSerializable(typeof(KubeconfigDocument))]
internal sealed partial class KubeconfigJson : JsonSerializerContext;
