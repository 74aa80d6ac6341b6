#!/usr/bin/env bash
# One-time GCP setup for the CI workflows (README: "CI environments"). Creates, or updates in
# place when run again:
#   - the Pulumi state bucket: uniform access, no public access, versioned, with one folder per GitHub
#     environment (production/, review/, preview/), each initialised (.pulumi/meta.yaml) and writable
#     by that environment's account alone;
#   - a workload identity pool with a GitHub OIDC provider that accepts only this repository's
#     tokens, so workflows get short-lived credentials and no service-account key exists;
#   - three service accounts, each impersonable only from one context (the token's `sub`):
#       gha-sdxl-preview  the `preview` environment (preview.yml): reads the project, its own state folder
#       gha-sdxl-review   the `review` environment (review-env.yml, reaper.yml): deploys pr-<n> stacks;
#                         may act as only sdxl-review-vm, the one VM service account they all use
#                         (granted on that account itself: IAM Conditions' resource attributes are not
#                         documented for iam.googleapis.com, so a name condition could not be relied on)
#       gha-sdxl-deploy   the `production` environment (deploy.yml)
#
#   ci/bootstrap/gcp-wif.sh OWNER/REPO PROJECT_ID BUCKET [LOCATION] [REVIEW_PROJECT_ID]
#
# Needs the gcloud CLI and a project owner's credentials (of both projects), once. It prints the
# repository variables to set. REVIEW_PROJECT_ID is where PR stacks deploy (default: PROJECT_ID).
# Give it: the review account's compute roles (instances, networks, firewalls) are project-wide, as a
# resource-name condition could not be relied on for every call a deploy makes (its operations and lists
# name no pr-* resource), so in a shared project PR code could stop production's VMs or change their firewalls.
set -euo pipefail

usage="usage: $0 OWNER/REPO PROJECT_ID BUCKET [LOCATION] [REVIEW_PROJECT_ID]"
repo=${1:?$usage}
project=${2:?$usage}
bucket=${3:?$usage}
location=${4:-us-central1}
review_project=${5:-$project}
pool=github-actions
provider=github

[[ $repo =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] || { echo "OWNER/REPO expected, got '$repo'" >&2; exit 2; }
for p in "$project" "$review_project"; do
  [[ $p =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || { echo "not a GCP project id: '$p'" >&2; exit 2; }
done
[[ $bucket =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]] || { echo "not a GCS bucket name: '$bucket'" >&2; exit 2; }
# The stacks name their source buckets sdxl-<project>-<stack>-source, which the deploy and review accounts
# administer: the state bucket must never match that.
[[ $bucket != sdxl-"$project"-* && $bucket != sdxl-"$review_project"-* ]] || { echo "state bucket '$bucket' would look like a stack's source bucket" >&2; exit 2; }
command -v gcloud >/dev/null || { echo "the gcloud CLI is required" >&2; exit 1; }

number=$(gcloud projects describe "$project" --format='value(projectNumber)')
review_number=$number
[ "$review_project" = "$project" ] || review_number=$(gcloud projects describe "$review_project" --format='value(projectNumber)')
pool_id="projects/$number/locations/global/workloadIdentityPools/$pool"

echo "==> APIs"
for p in $(printf '%s\n' "$project" "$review_project" | sort -u); do
  gcloud services enable --project "$p" compute.googleapis.com iam.googleapis.com \
    iamcredentials.googleapis.com sts.googleapis.com storage.googleapis.com \
    cloudresourcemanager.googleapis.com secretmanager.googleapis.com
done

echo "==> state bucket gs://$bucket ($location)"
if ! gcloud storage buckets describe "gs://$bucket" --project "$project" >/dev/null 2>&1; then
  gcloud storage buckets create "gs://$bucket" --project "$project" --location "$location" \
    --uniform-bucket-level-access --public-access-prevention
fi
# Versioning keeps every checkpoint: a bad update or a deleted stack can be recovered.
gcloud storage buckets update "gs://$bucket" --versioning --uniform-bucket-level-access \
  --public-access-prevention >/dev/null
# Each folder's layout marker (Pulumi's DIY backend writes it on first use, which a read-only account cannot).
meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
printf 'version: 1\n' >"$meta"
for folder in production review preview; do
  if ! gcloud storage objects describe "gs://$bucket/$folder/.pulumi/meta.yaml" >/dev/null 2>&1; then
    gcloud storage cp "$meta" "gs://$bucket/$folder/.pulumi/meta.yaml" >/dev/null
  fi
done

echo "==> workload identity pool $pool"
if ! gcloud iam workload-identity-pools describe "$pool" --project "$project" --location global >/dev/null 2>&1; then
  gcloud iam workload-identity-pools create "$pool" --project "$project" --location global \
    --display-name "GitHub Actions"
fi
# Only this repository's tokens are accepted at all; `sub` then picks the service account.
provider_flags=(--project "$project" --location global --workload-identity-pool "$pool"
  --attribute-mapping "google.subject=assertion.sub,attribute.repository=assertion.repository"
  --attribute-condition "assertion.repository == '$repo'")
if gcloud iam workload-identity-pools providers describe "$provider" --project "$project" \
    --location global --workload-identity-pool "$pool" >/dev/null 2>&1; then
  gcloud iam workload-identity-pools providers update-oidc "$provider" "${provider_flags[@]}"
else
  gcloud iam workload-identity-pools providers create-oidc "$provider" "${provider_flags[@]}" \
    --issuer-uri "https://token.actions.githubusercontent.com"
fi

# service_account NAME SUBJECT: the account, impersonable only by tokens with that `sub`.
service_account() {
  local name=$1 subject=$2 email="$1@$project.iam.gserviceaccount.com"
  if ! gcloud iam service-accounts describe "$email" --project "$project" >/dev/null 2>&1; then
    gcloud iam service-accounts create "$name" --project "$project" \
      --display-name "GitHub Actions ($repo): $subject" >/dev/null
  fi
  gcloud iam service-accounts add-iam-policy-binding "$email" --project "$project" \
    --role roles/iam.workloadIdentityUser --condition None \
    --member "principal://iam.googleapis.com/$pool_id/subject/repo:$repo:$subject" >/dev/null
  echo "$email"
}

# condition TITLE EXPRESSION: the --condition value, with `;` as the delimiter (`gcloud topic escaping`):
# gcloud splits the value on commas, and CEL expressions contain them.
condition() {
  [[ $1$2 != *";"* ]] || { echo "a condition may not contain ';': $1" >&2; exit 1; }
  printf '^;^title=%s;expression=%s' "$1" "$2"
}

# grant_in PROJECT EMAIL ROLE [CONDITION]: a project role, optionally limited by an IAM condition.
grant_in() {
  gcloud projects add-iam-policy-binding "$1" --member "serviceAccount:$2" --role "$3" \
    --condition "${4:-None}" >/dev/null
}
# grant EMAIL ROLE [CONDITION]: the same, in PROJECT_ID.
grant() { grant_in "$project" "$@"; }

# state_access EMAIL FOLDER: read and write that folder of the state bucket, and list the bucket.
state_access() {
  gcloud storage buckets add-iam-policy-binding "gs://$bucket" --member "serviceAccount:$1" \
    --role roles/storage.objectAdmin --condition "$(condition "state-$2-only" \
"resource.type == 'storage.googleapis.com/Bucket' || resource.name.startsWith('projects/_/buckets/$bucket/objects/$2/')")" \
    >/dev/null
}

echo "==> service accounts"
preview=$(service_account gha-sdxl-preview environment:preview)
review=$(service_account gha-sdxl-review environment:review)
deploy=$(service_account gha-sdxl-deploy environment:production)

state_access "$preview" preview
grant "$preview" roles/compute.viewer
state_access "$review" review
state_access "$deploy" production

# grant_stack_roles EMAIL STACK_PREFIX PROJECT PROJECT_NUMBER: what `pulumi up` and `destroy` of a stack named
# STACK_PREFIX* in PROJECT need.
grant_stack_roles() {
  local account=$1 stacks=$2 project=$3 number=$4
  # The stack's network, firewall, address, disks and VM: project-wide (see REVIEW_PROJECT_ID above).
  for role in roles/compute.instanceAdmin.v1 roles/compute.networkAdmin roles/compute.securityAdmin \
      roles/iam.serviceAccountViewer; do
    grant_in "$project" "$account" "$role"
  done
  # Its token secrets (sdxl-<stack>-api-token, -hf-token) and their reader grant; creating is project-level.
  grant_in "$project" "$account" roles/secretmanager.admin "$(condition "sdxl-$stacks-secrets" \
"resource.type == 'cloudresourcemanager.googleapis.com/Project' || \
resource.name.startsWith('projects/$number/secrets/sdxl-$stacks')")"
  # Its source bucket (sdxl-<project>-<stack>-source), the bundle in it and the VM's conditional read grant.
  grant_in "$project" "$account" roles/storage.admin "$(condition "sdxl-$stacks-source-buckets" \
"resource.type == 'cloudresourcemanager.googleapis.com/Project' || \
resource.name.startsWith('projects/_/buckets/sdxl-$project-$stacks')")"
}
grant_stack_roles "$review" pr- "$review_project" "$review_number"
grant_stack_roles "$deploy" "" "$project" "$number"
if [ "$review_project" = "$project" ]; then
  echo "warning: review shares $project with production: its compute roles reach production's VMs and" \
    "firewalls. Pass REVIEW_PROJECT_ID for isolation." >&2
fi

# Production's stacks each create their VM account (sdxl-<stack>-sa), grant it log and metric writing and
# delete it with the stack. The deploy account runs only main's reviewed code (environment `production`).
for role in roles/iam.serviceAccountCreator roles/iam.serviceAccountUser roles/iam.serviceAccountDeleter; do
  grant "$deploy" "$role"
done
grant "$deploy" roles/resourcemanager.projectIamAdmin "$(condition sdxl-vm-roles-only \
"api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly(\
['roles/logging.logWriter', 'roles/monitoring.metricWriter'])")"

# Review stacks share one VM account, made here with its log and metric roles (config gcpServiceAccount, which
# review-env.yml sets): the review account may act as that account alone, so no PR can start a VM as a CI
# account or a production one, and creates no account and grants no project role itself.
echo "==> review VM service account"
review_vm="sdxl-review-vm@$review_project.iam.gserviceaccount.com"
if ! gcloud iam service-accounts describe "$review_vm" --project "$review_project" >/dev/null 2>&1; then
  gcloud iam service-accounts create sdxl-review-vm --project "$review_project" \
    --display-name "SDXL endpoint: the VMs of pull-request stacks" >/dev/null
fi
for role in roles/logging.logWriter roles/monitoring.metricWriter; do
  grant_in "$review_project" "$review_vm" "$role"
done
gcloud iam service-accounts add-iam-policy-binding "$review_vm" --project "$review_project" \
  --member "serviceAccount:$review" --role roles/iam.serviceAccountUser --condition None >/dev/null

cat <<EOF

Done. Set these repository variables (Settings > Secrets and variables > Actions > Variables):
  PULUMI_BACKEND_URL              gs://$bucket   (the bucket only: each environment uses its folder)
  GCP_PROJECT                     $project
  GCP_WORKLOAD_IDENTITY_PROVIDER  $pool_id/providers/$provider
  GCP_PREVIEW_SERVICE_ACCOUNT     $preview
  GCP_REVIEW_SERVICE_ACCOUNT      $review
  GCP_DEPLOY_SERVICE_ACCOUNT      $deploy
  GCP_REVIEW_VM_SERVICE_ACCOUNT   $review_vm   (review-env.yml gives it to PR stacks' VMs)
  GCP_REVIEW_PROJECT              $review_project   (where PR stacks deploy)
and, in each environment (production, review, preview), its own secret PULUMI_CONFIG_PASSPHRASE
(openssl rand -base64 32 each; keep copies). Never a repository secret: pull requests can read those.
EOF
